"""tools/analysis/vis_attention.py: on a tiny KW ResNet one PNG (of the expected size) and one
.npy per warehouse, and at tau = 1 the saved means are beta (the init strategy, paper A.2); on
ODConv and DY-Conv ResNets one map of the mean kernel attention per conv; what is not drawn is
named; mmdet configs alike."""
import json
import os.path as osp
import runpy
import shutil

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from mmkw.analysis.attention_maps import KERNEL_MAP_ROW_INCHES, png_size
from mmkw.analysis.models import build_model_from_config
from mmkw.ops import DynamicConv2d, KWConv2d

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

TINY_CONFIG = """
custom_imports = dict(imports=['mmkw'], allow_failed_imports=False)
model = dict(
    type='ImageClassifier',
    data_preprocessor=dict(num_classes=10, mean=[127.5] * 3, std=[127.5] * 3, to_rgb=False),
    backbone=dict(type='KWResNet_CIFAR', depth=18, budget='{budget}', num_stages=2,
                  strides=(1, 2), dilations=(1, 1), out_indices=(1, ), stem_channels=8,
                  base_channels=8, attention_init='{init}'),
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


PEER_CONFIG = TINY_CONFIG.replace(
    "type='KWResNet_CIFAR', depth=18, budget='{budget}',",
    "type='DynamicResNet_CIFAR', depth=18, conv_cfg={conv_cfg},").replace(
    ", attention_init='{init}'", '')


def write_peer_config(tmp_path, conv_cfg):
    path = tmp_path / f"tiny_{conv_cfg['type']}_{conv_cfg.get('kernel_num', 0)}.py"
    path.write_text(PEER_CONFIG.format(conv_cfg=conv_cfg))
    return str(path)


@pytest.mark.parametrize('method,layer_type,num_convs', [('ODConv', 'ODConv2d', 8),
                                                         ('DyConv', 'DyConv2d', 9)])
def test_kernel_attention_map_per_conv(tmp_path, digits_root, method, layer_type, num_convs):
    config = write_peer_config(tmp_path, dict(type=method, kernel_num=4))
    model = build_model_from_config(Config.fromfile(config))
    checkpoint = tmp_path / 'tiny.pth'
    torch.save(dict(state_dict=model.state_dict()), checkpoint)
    out = tmp_path / 'maps'
    maps = run_tool([config, str(checkpoint), '--data', str(digits_root), '--out', str(out),
                     '--max-images', '7', '--batch-size', '3'])
    assert [m.name for m in maps] == ['kernel_attention']
    convs = [name for name, m in model.named_modules() if isinstance(m, DynamicConv2d)]
    assert len(convs) == num_convs
    mean = np.load(out / 'kernel_attention.npy')
    assert mean.shape == (num_convs, 4)
    # softmax over the K kernels at T = 1: each conv's mean attention is a distribution
    np.testing.assert_allclose(mean.sum(axis=1), 1, atol=1e-6)
    assert (mean > 0).all()
    # the means are those of the convs' kernel attentions on these images, in model order
    # (one batch of all 7 images here, batches of 3 in the tool: eval-mode norms, same result)
    from mmengine.dataset import Compose
    from mmengine.registry import init_default_scope
    init_default_scope('mmpretrain')
    pipeline = Compose(Config.fromfile(config).test_pipeline)
    samples = [pipeline(dict(img_path=str(p)))
               for p in sorted((digits_root / 'val').rglob('*.png'))[:7]]
    captured = {}
    for name in convs:
        model.get_submodule(name).attention.register_forward_hook(
            lambda module, args, output, name=name: captured.__setitem__(name, output[-1]))
    model.eval()
    with torch.no_grad():
        model(model.data_preprocessor(dict(inputs=[s['inputs'] for s in samples]),
                                      False)['inputs'])
    expected = np.stack([captured[name].double().mean(0).numpy() for name in convs])
    np.testing.assert_allclose(mean, expected, atol=1e-6)
    index = json.loads((out / 'index.json').read_text())
    entry = index['kernel_maps']['kernel_attention']
    assert [c['name'] for c in entry['convs']] == convs
    assert {c['type'] for c in entry['convs']} == {layer_type}
    with Image.open(out / 'kernel_attention.png') as image:
        assert image.size == png_size(num_convs, 4, KERNEL_MAP_ROW_INCHES)
    if method == 'ODConv':
        assert any('channel, filter, spatial' in note for note in index['not_drawn'])


def test_temperature_flattens_the_kernel_attention(tmp_path, digits_root):
    config = write_peer_config(tmp_path, dict(type='DyConv', kernel_num=4))
    maps = run_tool([config, 'none', '--data', str(digits_root), '--out', str(tmp_path / 'm'),
                     '--max-images', '4', '--temperature', '1e6'])
    # T -> infinity: the softmax tends to the uniform mixture
    np.testing.assert_allclose(maps[0].mean, 0.25, atol=1e-4)
    with pytest.raises(ValueError, match=r'--tau/--temperature 0\.5 .*\[1, inf\]'):
        run_tool([config, 'none', '--data', str(digits_root), '--out', str(tmp_path / 'm'),
                  '--temperature', '0.5'])


def test_what_is_not_drawn_is_named(tmp_path, digits_root, capsys):
    # ODConv with K = 1 has no kernel attention
    config = write_peer_config(tmp_path, dict(type='ODConv', kernel_num=1))
    out = tmp_path / 'maps'
    maps = run_tool([config, 'none', '--data', str(digits_root), '--out', str(out),
                     '--max-images', '2'])
    assert maps == [] and not list(out.glob('*.png'))
    notes = json.loads((out / 'index.json').read_text())['not_drawn']
    assert notes == ['8 ODConv2d convs have a single kernel (K = 1), so no kernel attention: '
                     'nothing drawn for them']
    assert 'not drawn: 8 ODConv2d' in capsys.readouterr().out


def test_kw_star_maps_its_warehouses(tmp_path, digits_root):
    # KW* computes its attentions through forward_with_heads (no forward hook on the attention
    # sees them); the maps are those of its cell attentions, its extra heads are named undrawn
    config = write_peer_config(tmp_path, dict(type='KWStar', budget='1x'))
    out = tmp_path / 'maps'
    maps = run_tool([config, 'none', '--data', str(digits_root), '--out', str(out),
                     '--max-images', '3', '--tau', '1'])
    model = build_model_from_config(Config.fromfile(config))
    betas = betas_per_warehouse(model)
    assert sorted(m.name for m in maps) == sorted(betas)
    for wmap in maps:  # tau = 1: beta, as for KW
        np.testing.assert_allclose(wmap.mean, betas[wmap.name], atol=1e-6)
    notes = json.loads((out / 'index.json').read_text())['not_drawn']
    assert notes == ['9 KWConv2d convs: their channel, filter and kernel-position heads (KW*) '
                     'are not drawn']


def test_detector_config(tmp_path, shapes_root):
    # an mmdet config: its test pipeline without the annotations, the tensor-mode forward
    config = osp.join(ROOT, 'configs/mask_rcnn/mask-rcnn_kw1x-r18-slim_fpn_shapes.py')
    out = tmp_path / 'maps'
    maps = run_tool([config, 'none', '--data', str(shapes_root), '--out', str(out),
                     '--max-images', '2', '--cfg-options', 'model.backbone.init_cfg=None'])
    names = sorted(m.name for m in maps)
    assert names and names == sorted(p.stem for p in out.glob('*.png'))
    assert all(name.startswith('stage') for name in names)
    assert json.loads((out / 'index.json').read_text())['images'] == 2


VIT_CONFIG = """
custom_imports = dict(imports=['mmkw'], allow_failed_imports=False)
model = dict(
    type='ImageClassifier',
    data_preprocessor=dict(num_classes=10, mean=[127.5] * 3, std=[127.5] * 3, to_rgb=False),
    backbone=dict(type='KWVisionTransformer', arch=dict(embed_dims=32, num_layers=2,
                  num_heads=2, feedforward_channels=64), img_size=16, patch_size=8,
                  budget='1x', layout=dict(warehouses=[dict(layers=('value', 'proj')),
                                                       dict(layers=('fc1', 'fc2'))])),
    neck=None,
    head=dict(type='VisionTransformerClsHead', num_classes=10, in_channels=32,
              loss=dict(type='CrossEntropyLoss')))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(16, 16)),
    dict(type='PackInputs'),
]
"""


def test_kw_vit_maps_its_warehouses(tmp_path, digits_root):
    """KW DeiT's KWLinear layers (tokens, not convs) are drawn per warehouse as KW convs are."""
    from mmkw.ops import KWLinear
    config = tmp_path / 'tiny_vit.py'
    config.write_text(VIT_CONFIG)
    out = tmp_path / 'maps'
    maps = run_tool([str(config), 'none', '--data', str(digits_root), '--out', str(out),
                     '--max-images', '3', '--tau', '1'])
    model = build_model_from_config(Config.fromfile(str(config)))
    betas = {}
    for module in model.modules():
        if isinstance(module, KWLinear):
            name = list(module.warehouse_manager.specs)[module.warehouse_index]
            betas.setdefault(name, []).append(module.attention.beta[:, :-1].numpy())
    assert maps and sorted(m.name for m in maps) == sorted(betas)
    for wmap in maps:  # tau = 1: the means are beta
        np.testing.assert_allclose(wmap.mean, np.concatenate(betas[wmap.name]), atol=1e-6)
