"""mmkw.analysis.models: the one config-to-model helper (scopes, custom_imports, overrides,
checkpoints, named errors) and the model summary of tools/analysis/warehouse_table.py for every
method and for mmdet configs."""
import json
import os.path as osp
import runpy

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config

from mmkw.analysis.models import (build_model_from_config, dynamic_conv_rows, model_scope,
                                  parameter_groups, warehouse_rows)
from mmkw.ops import DynamicAttention, DynamicConv2d, WarehouseManager

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DETECTOR = osp.join(ROOT, 'configs/mask_rcnn/mask-rcnn_kw1x-r18-slim_fpn_shapes.py')
METHODS = {
    'plain': None,
    'odconv': dict(type='ODConv', kernel_num=4),
    'dyconv': dict(type='DyConv', kernel_num=4),
    'kw': dict(type='KW', budget='1x'),
    'kwstar': dict(type='KWStar', budget='1x'),
}


def tiny_cfg(method: str, **model_keys) -> Config:
    """A two-stage ResNet-18 classifier (8 and 16 channels) with ``method``'s convs, as a
    ``Config`` built from a dict (no file: its custom_imports are the helper's to import)."""
    model = dict(
        type='ImageClassifier',
        backbone=dict(type='DynamicResNet_CIFAR', depth=18, conv_cfg=METHODS[method],
                      num_stages=2, strides=(1, 2), dilations=(1, 1), out_indices=(1, ),
                      stem_channels=8, base_channels=8),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=10, in_channels=16,
                  loss=dict(type='CrossEntropyLoss')))
    model.update(model_keys)
    return Config(dict(custom_imports=dict(imports=['mmkw'], allow_failed_imports=False),
                       model=model))


def numel(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters(recurse=False))


# ------------------------------------------------------------------ build_model_from_config
def test_overrides_apply_to_a_copy_and_checkpoints_load(tmp_path):
    cfg = tiny_cfg('odconv')
    model = build_model_from_config(cfg, {'model.head.num_classes': 7})
    assert model.head.fc.out_features == 7
    assert cfg.model.head.num_classes == 10  # the caller's config is not changed
    path = tmp_path / 'tiny.pth'
    torch.save({'state_dict': model.state_dict()}, path)
    loaded = build_model_from_config(cfg, {'model.head.num_classes': 7}, checkpoint=path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # a checkpoint of another model is refused when loading strictly
    with pytest.raises(RuntimeError, match='size mismatch|head.fc'):
        build_model_from_config(cfg, checkpoint=path)


def test_a_dict_override_replaces_a_non_dict_value():
    # mmengine merges dicts into dicts only: conv_cfg=None in the config takes a method here
    model = build_model_from_config(tiny_cfg('plain'), {
        'model.backbone.conv_cfg': dict(type='ODConv', kernel_num=4)})
    assert {type(m).__name__ for m in model.modules()
            if isinstance(m, DynamicConv2d)} == {'ODConv2d'}


def test_scope_from_the_config_or_the_model_type():
    assert model_scope(tiny_cfg('plain')) == 'mmpretrain'
    assert model_scope(Config(dict(model=dict(type='MaskRCNN')))) == 'mmdet'
    assert model_scope(Config(dict(default_scope='mmdet', model=dict(type='X')))) == 'mmdet'
    with pytest.raises(KeyError, match="'NoSuchModel' is registered neither"):
        model_scope(Config(dict(model=dict(type='NoSuchModel'))))
    with pytest.raises(ValueError, match="default_scope 'mmseg' is not supported"):
        model_scope(Config(dict(default_scope='mmseg', model=dict(type='X'))))


def test_bad_input_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="config 'missing.py' does not exist"):
        build_model_from_config('missing.py')
    with pytest.raises(FileNotFoundError, match='checkpoint .*nothing.pth.* does not exist'):
        build_model_from_config(tiny_cfg('plain'), checkpoint=tmp_path / 'nothing.pth')
    with pytest.raises(ValueError, match='has no model dict'):
        build_model_from_config(Config(dict(train_cfg=dict())))
    cfg = tiny_cfg('plain')
    cfg.custom_imports = dict(imports=['mmkw_no_such_module'], allow_failed_imports=False)
    with pytest.raises(ImportError, match="custom_imports \\['mmkw_no_such_module'\\]"):
        build_model_from_config(cfg)


def test_detector_config_builds_in_the_mmdet_scope():
    from mmdet.models.detectors import BaseDetector
    detector = build_model_from_config(DETECTOR, {'model.backbone.init_cfg': None})
    assert isinstance(detector, BaseDetector)


# ------------------------------------------------------------------ the summary
@pytest.mark.parametrize('method', list(METHODS))
def test_parameter_groups_split_the_model(method):
    model = build_model_from_config(tiny_cfg(method))
    groups = parameter_groups(model)
    total = sum(p.numel() for p in model.parameters())
    assert groups['total']['params'] == total
    assert sum(groups[k]['params'] for k in groups if k != 'total') == total
    attentions = [m for m in model.modules() if isinstance(m, DynamicAttention)]
    convs = [m for m in model.modules() if isinstance(m, DynamicConv2d)]
    assert groups['attentions']['params'] == sum(
        p.numel() for m in attentions for p in m.parameters())
    # what the dynamic convs hold outside their attentions: ODConv's and DY-Conv's K kernels
    assert groups['dynamic_conv_weights']['params'] == numel(convs)
    managers = [m for m in model.modules() if isinstance(m, WarehouseManager)]
    assert groups['shared']['params'] == sum(p.numel() for m in managers for p in m.parameters())
    static = [m for m in model.modules() if isinstance(m, nn.Conv2d) and
              not any(m is c for a in attentions for c in a.modules())]
    assert groups['static_convs']['params'] == numel(static)
    if method == 'plain':
        assert groups['static_convs']['params'] > 0 == groups['attentions']['params']
    else:
        assert groups['attentions']['params'] > 0
    assert (groups['shared']['params'] > 0) == method.startswith('kw')
    assert (groups['dynamic_conv_weights']['params'] > 0) == (method in ('odconv', 'dyconv'))


def test_dynamic_convs_per_layer_type():
    # the methods' layer choices: ODConv the 8 block convs, DY-Conv also the strided 1x1
    # shortcut of stage 2, KW the same 9 convs drawing on warehouses
    rows = {m: dynamic_conv_rows(build_model_from_config(tiny_cfg(m))) for m in METHODS}
    assert rows['plain'] == []
    (od, ), (dy, ), (kw, ) = rows['odconv'], rows['dyconv'], rows['kw']
    assert (od['type'], od['convs'], od['pointwise'], od['spatial']) == ('ODConv2d', 8, 0, 8)
    assert (dy['type'], dy['convs'], dy['pointwise'], dy['spatial']) == ('DyConv2d', 9, 1, 8)
    assert od['kernels'] == dy['kernels'] == [4] and kw['kernels'] == []
    assert od['temperatures'] == dy['temperatures'] == [1.0] and kw['temperatures'] == [0.0]
    assert kw['weights'] == 0 and kw['convs'] == 9
    model = build_model_from_config(tiny_cfg('odconv'))
    assert od['weights'] == sum(m.weight.numel() for m in model.modules()
                                if isinstance(m, DynamicConv2d))


def run_tool(argv):
    return runpy.run_path(osp.join(ROOT, 'tools/analysis/warehouse_table.py'))['main'](argv)


def test_tool_prints_the_summary_of_every_method(tmp_path, capsys):
    for method in ('kw', 'odconv'):
        path = tmp_path / f'tiny-{method}.py'
        tiny_cfg(method).dump(str(path))
        out = tmp_path / f'{method}.json'
        [summary] = run_tool([str(path), '--forward', '8', '8', '--json', str(out)])
        screen = capsys.readouterr().out
        model = build_model_from_config(str(path))
        total = sum(p.numel() for p in model.parameters())
        backbone = sum(p.numel() for p in model.backbone.parameters())
        # the lines the demo shows, unchanged
        assert (f'model ImageClassifier with backbone DynamicResNet_CIFAR: {total / 1e6:.2f}M '
                f'parameters (backbone {backbone / 1e6:.2f}M)') in screen
        assert 'backbone outputs: [2, 16, 4, 4]' in screen
        assert json.loads(out.read_text())['params'] == summary['params'] == total
        if method == 'kw':
            assert summary['conv_method'] == 'KW'
            assert [row['name'] for row in summary['warehouses']] == ['stage0', 'stage1']
            assert 'backbone.warehouse_manager.stage0' in screen and 'KWConv2d' in screen
        else:
            assert '(no Kernel Warehouse layers)' in screen and 'ODConv2d' in screen
            assert 'dynamic conv weights' in screen


def test_tool_on_a_detector_config(capsys):
    [summary] = run_tool([DETECTOR, '--forward', '64', '64'])
    screen = capsys.readouterr().out
    assert 'model MaskRCNN with backbone KWResNet' in screen
    assert summary['warehouses'] == warehouse_rows(
        build_model_from_config(DETECTOR, {'model.backbone.init_cfg': None}))
    assert summary['groups']['shared']['params'] > 0


def test_tool_summarises_several_configs_with_a_size_each(tmp_path, capsys):
    # the main job prints its classifier and its detector in one process
    path = tmp_path / 'tiny-kw.py'
    tiny_cfg('kw').dump(str(path))
    out = tmp_path / 'both.json'
    summaries = run_tool([str(path), DETECTOR, '--forward', '8', '8', '64', '64',
                          '--json', str(out)])
    screen = capsys.readouterr().out
    assert [s['config'] for s in summaries] == [str(path), DETECTOR]
    assert screen.index('backbone outputs: [2, 16, 4, 4]') < screen.index(
        'model MaskRCNN with backbone KWResNet')
    assert 'backbone outputs: [2, 64, 16, 16], [2, 128, 8, 8]' in screen
    assert [s['params'] for s in json.loads(out.read_text())] == [s['params'] for s in summaries]
    with pytest.raises(SystemExit):
        run_tool([str(path), DETECTOR, '--forward', '8', '8', '64'])
    assert '--forward takes H W once or once per config (2), got 3 numbers' in \
        capsys.readouterr().err
