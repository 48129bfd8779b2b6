"""tools/analysis/vis_attention.py on a tiny KW ResNet: one PNG (of the expected size) and one
.npy per warehouse; at tau = 1 the saved means are beta (the init strategy, paper A.2)."""
import json
import os.path as osp
import runpy
import shutil

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from mmkw.analysis.attention_maps import png_size
from mmkw.analysis.models import build_model_from_config
from mmkw.ops import KWConv2d

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

TINY_CONFIG = """
custom_imports = dict(imports=['mmkw'], allow_failed_imports=False)
model = dict(
    type='ImageClassifier',
    data_preprocessor=dict(num_classes=10, mean=[127.5] * 3, std=[127.5] * 3, to_rgb=False),
    backbone=dict(type='KWResNet_CIFAR', depth=18, budget='{budget}', num_stages=2,
                  strides=(1, 2), out_indices=(1, ), stem_channels=8, base_channels=8,
                  attention_init='{init}'),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=10, in_channels=16,
              loss=dict(type='CrossEntropyLoss')))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(8, 8)),
    dict(type='PackInputs'),
]
"""


def write_config(tmp_path, budget='1x', init='one_to_one'):
    path = tmp_path / f'tiny_{budget.replace("/", "_")}_{init}.py'
    path.write_text(TINY_CONFIG.format(budget=budget, init=init))
    return str(path)


def run_tool(argv):
    module = runpy.run_path(osp.join(ROOT, 'tools/analysis/vis_attention.py'))
    return module['main'](argv)


def betas_per_warehouse(model):
    betas = {}
    for module in model.modules():
        if isinstance(module, KWConv2d):
            name = list(module.warehouse_manager.specs)[module.warehouse_index]
            betas.setdefault(name, []).append(module.attention.beta[:, :-1].numpy())
    return {k: np.concatenate(v) for k, v in betas.items()}


@pytest.mark.parametrize('budget,init', [('1x', 'one_to_one'), ('1/2x', 'one_to_n')])
def test_tau_one_maps_are_beta(tmp_path, digits_root, budget, init):
    config = write_config(tmp_path, budget, init)
    model = build_model_from_config(Config.fromfile(config))
    checkpoint = tmp_path / 'tiny.pth'
    torch.save(dict(state_dict=model.state_dict()), checkpoint)
    out = tmp_path / 'maps'
    run_tool([config, str(checkpoint), '--data', str(digits_root), '--out', str(out),
              '--tau', '1', '--max-images', '12', '--batch-size', '5'])
    betas = betas_per_warehouse(model)
    assert sorted(p.stem for p in out.glob('*.png')) == sorted(betas) == ['stage0', 'stage1']
    index = json.loads((out / 'index.json').read_text())
    assert index['images'] == 12 and index['tau'] == 1
    for name, beta in betas.items():
        mean = np.load(out / f'{name}.npy')
        np.testing.assert_allclose(mean, beta, atol=1e-6)
        with Image.open(out / f'{name}.png') as image:
            assert image.size == png_size(*beta.shape)
        entry = index['warehouses'][name]
        assert (entry['mt'], entry['n']) == beta.shape
        assert entry['convs'][-1]['rows'][1] == beta.shape[0]
        assert entry['beta_argmax_agreement'] == 1.0


def test_learnt_maps_on_a_flat_folder(tmp_path, digits_root):
    config = write_config(tmp_path)
    flat = tmp_path / 'flat'
    flat.mkdir()
    for i, path in enumerate(sorted((digits_root / 'val').rglob('*.png'))[:6]):
        shutil.copy(path, flat / f'{i}.png')
    out = tmp_path / 'maps'
    maps = run_tool([config, 'none', '--data', str(flat), '--out', str(out)])
    assert len(maps) == 2 and len(list(out.glob('*.png'))) == 2
    for wmap in maps:
        assert np.isfinite(wmap.mean).all() and not np.allclose(wmap.mean, wmap.beta)
        # CAF at tau = 0: |alpha| sums to less than 1 per mixture
        assert (np.abs(wmap.mean).sum(1) < 1).all()
    assert json.loads((out / 'index.json').read_text())['images'] == 6


def test_bad_arguments(tmp_path):
    config = write_config(tmp_path)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        run_tool([config, 'none', '--data', str(tmp_path / 'missing'), '--out', str(tmp_path)])
    with pytest.raises(ValueError, match='--tau'):
        run_tool([config, 'none', '--data', str(tmp_path), '--out', str(tmp_path), '--tau', '2'])
