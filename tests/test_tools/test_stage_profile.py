"""tools/analysis/stage_profile.py: the stages of a backbone in forward order, their
multiply-adds summing to the model's, and the comparison with a baseline."""
import os.path as osp
import runpy

import pytest
import torch.nn as nn

from mmkw.analysis.benchmark import count_flops
from mmkw.analysis.models import build_model_from_config
from mmkw.analysis.stage_profile import (StageCost, compare_stages, format_stage_table,
                                         profile_stages)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
KW = osp.join(ROOT, 'configs/kw_resnet/kw1x-resnet18_1xb16_digits.py')
PLAIN = osp.join(ROOT, 'configs/kw_resnet/resnet18_1xb16_digits.py')


def test_stages_in_forward_order_with_the_backbones_macs():
    model = build_model_from_config(KW)
    costs = profile_stages(model, batch_size=2, shape=(16, 16), repeats=1, warmup=0)
    names = [cost.name for cost in costs]
    assert names[-4:] == ['layer1', 'layer2', 'layer3', 'layer4']
    assert all(cost.inference > 0 and cost.train > 0 for cost in costs)
    backbone_macs = count_flops(model.backbone, (16, 16), 'cpu')['flops']
    assert sum(cost.macs for cost in costs) == backbone_macs
    # the release formulation runs too, on the same stages
    release = profile_stages(model, batch_size=2, shape=(16, 16), repeats=1, warmup=0,
                             release=True)
    assert [cost.name for cost in release] == names


def test_compare_relates_each_stage_and_the_total():
    model = [StageCost('stem', 10, 1.0, 3.0), StageCost('layer1', 30, 3.0, 9.0)]
    base = [StageCost('stem', 10, 0.5, 1.0), StageCost('layer1', 10, 1.0, 3.0)]
    rows = compare_stages(model, base)
    assert [row['stage'] for row in rows] == ['stem', 'layer1', 'total']
    assert rows[1]['mac_ratio'] == pytest.approx(3.0)
    assert rows[1]['inference_ratio'] == pytest.approx(3.0)
    assert rows[0]['train_ratio'] == pytest.approx(3.0)
    assert rows[2]['mac_share'] == pytest.approx(1.0)
    assert rows[2]['inference_ratio'] == pytest.approx(4.0 / 1.5)
    assert rows[0]['mac_share'] + rows[1]['mac_share'] == pytest.approx(1.0)
    # a stage the baseline lacks has no ratios
    rows = compare_stages(model + [StageCost('extra', 5, 1.0, 1.0)], base)
    assert 'mac_ratio' not in rows[2]
    table = format_stage_table(rows, markdown=True)
    assert table.splitlines()[0].startswith('| stage | GMACs')
    assert '| extra |' in table and '| - |' in table


def test_a_plain_module_without_backbone_is_profiled():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    costs = profile_stages(model, batch_size=2, shape=(8, 8), repeats=1, warmup=0)
    assert [cost.name for cost in costs] == ['0', '1', '2']
    assert costs[0].macs == 4 * 3 * 9 * 36 and costs[1].macs == 0


def test_cli_prints_both_formulations(capsys):
    module = runpy.run_path(osp.join(ROOT, 'tools/analysis/stage_profile.py'))
    module['main']([KW, '--compare', PLAIN, '--shape', '16', '--batch-size', '2', '--repeats',
                    '1', '--release-formulation'])
    out = capsys.readouterr().out
    assert 'kw1x-resnet18_1xb16_digits vs resnet18_1xb16_digits' in out
    assert 'kw1x-resnet18_1xb16_digits (release formulation) vs' in out
    assert out.count('layer4') == 2 and out.count('total') == 2
