"""tools/model_converters/kw_official_to_mmkw.py and mmkw.converters: official Kernel Warehouse
checkpoints convert to mmkw, reproduce the official reference outputs, load with strict=True into
the model of the matching mmkw config for every released family and budget, and mismatches are
refused with the first differing key named."""
import argparse
import copy
import importlib.util
import json
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import mmkw  # noqa: F401  (registers the modules)
from mmkw.analysis.models import build_model_from_config
from mmkw.converters import (ConversionError, convert_official, convert_state_dict,
                             expected_shapes, load_official_checkpoint, save_checkpoint)
from mmkw.converters.official import (CLASSIFICATION_CONFIGS, DETECTION_CONFIGS, Target,
                                      rename_official)
from mmkw.ops import KWConv2d, WarehouseManager, set_temperature
from official_kw_layout import random_state_dict, released_layout

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO.parent / 'shared' / 'fixtures' / 'official_kw'
TOOL = REPO / 'tools' / 'model_converters' / 'kw_official_to_mmkw.py'

pytestmark = pytest.mark.usefixtures('one_thread')


@lru_cache(maxsize=None)
def load_config(config: str):
    from mmengine.config import Config
    return Config.fromfile(str(REPO / config))


def build_config_model(config: str) -> nn.Module:
    """A fresh model of an mmkw config (as tools/train.py and tools/test.py build it)."""
    return build_model_from_config(load_config(config))


def official_checkpoint(arch, budget, detection=False, seed=0):
    """A synthetic official checkpoint: the release's names and shapes, random values."""
    layout = released_layout(arch, budget, detection=detection)
    return random_state_dict(layout.shapes('backbone.' if detection else ''), seed=seed)


# ----------------------------------------------------------------- the official reference nets
class FixtureNet(nn.Module):
    """The official fixtures' network: KW convs in sequence with a ReLU after each, under the
    fixtures' module names (``convs.{i}``, ``warehouse_manager``)."""

    def __init__(self, desc: dict) -> None:
        super().__init__()
        manager = desc['manager']
        budget = {k: manager[k] for k in ('cell_num_ratio', 'cell_inplane_ratio',
                                          'cell_outplane_ratio')}
        self.warehouse_manager = WarehouseManager(budget, manager['reduction'],
                                                  manager.get('nonlocal_basis_ratio', 1.0))
        self.convs = nn.ModuleList([
            KWConv2d(layer['in'], layer['out'], layer['k'], layer.get('stride', 1),
                     layer.get('padding', layer['k'] // 2),
                     groups=layer.get('groups', 1), bias=layer.get('bias', False),
                     warehouse_manager=self.warehouse_manager,
                     warehouse_name=f"w{layer['group']}")
            for layer in desc['layers']
        ])
        self.warehouse_manager.build(self)

    def forward(self, x):
        outs = []
        for conv in self.convs:
            x = F.relu(conv(x))
            outs.append(x)
        return outs


def fixture(case):
    if not FIXTURES.is_dir():
        pytest.skip(f'official fixtures not found at {FIXTURES} (../shared is absent)')
    desc = json.loads((FIXTURES / f'{case}.json').read_text())
    return desc, FIXTURES / f'{case}.pt'


@pytest.mark.parametrize('case', ['b1', 'b1d2', 'b1d2_basis'])
def test_official_fixtures_convert_and_reproduce(case, tmp_path):
    desc, path = fixture(case)
    net = FixtureNet(desc).eval()
    state_dict, info = load_official_checkpoint(path)
    assert info['source_key'] == 'state_dict'
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    converted, dropped = convert_state_dict(state_dict, expected=shapes)
    assert not dropped
    out = tmp_path / f'{case}_mmkw.pth'
    torch.save({'state_dict': converted, 'meta': {'source': path.name}}, out)
    net.load_state_dict(torch.load(out, weights_only=True)['state_dict'], strict=True)
    reference = torch.load(path, weights_only=True)
    for tau, expected in reference['outputs'].items():
        set_temperature(net, float(tau))
        with torch.no_grad():
            outputs = net(reference['input'])
        for layer, (got, ref) in enumerate(zip(outputs, expected)):
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=0,
                                       msg=f'{case} tau={tau} layer {layer}')


def test_official_fixture_of_another_budget_is_refused():
    desc, _ = fixture('b1')
    _, half = fixture('b1d2')
    shapes = {k: tuple(v.shape) for k, v in FixtureNet(desc).state_dict().items()}
    state_dict, _ = load_official_checkpoint(half)
    with pytest.raises(ConversionError, match=r"'warehouse_manager\.weights\.0'.*shape"):
        convert_state_dict(state_dict, expected=shapes)


# ----------------------------------------------------------------- released families
RELEASE_PARAMS = {  # millions, with the 1000-class head (the release's README)
    ('resnet18', '1/4x'): 4.03, ('resnet18', '1/2x'): 7.43, ('resnet18', '1x'): 11.93,
    ('resnet18', '2x'): 23.24, ('resnet18', '4x'): 45.86, ('resnet18', None): 11.69,
    ('resnet50', '1/2x'): 17.64, ('resnet50', '1x'): 28.05, ('resnet50', '4x'): 102.02,
    ('resnet50', None): 25.56,
    ('mobilenetv2_100', '1/2x'): 2.65, ('mobilenetv2_100', '1x'): 5.17,
    ('mobilenetv2_100', '4x'): 11.38, ('mobilenetv2_100', None): 3.50,
    ('mobilenetv2_050', '1/2x'): 1.47, ('mobilenetv2_050', '1x'): 2.85,
    ('mobilenetv2_050', '4x'): 4.65, ('mobilenetv2_050', None): 1.97,
    ('convnext_tiny', '1x'): 39.37, ('convnext_tiny', None): 28.59,
}


def test_synthetic_official_layouts_have_the_release_sizes():
    # The fact-built layouts (tests/test_tools/official_kw_layout.py) are independent of mmkw;
    # their parameter counts must be the release's before they can test the converter.
    assert set(RELEASE_PARAMS) == set(CLASSIFICATION_CONFIGS)
    for (arch, budget), params in RELEASE_PARAMS.items():
        count = released_layout(arch, budget).num_params() / 1e6
        assert abs(count - params) < 0.006, (arch, budget, count)
    # ... and the warehouse sizes the notes list
    assert [s[0] for s in released_layout('resnet50', '1x').cells()] == [87, 104, 138, 47]
    assert [s[0] for s in released_layout('convnext_tiny', '1x').cells()] == \
        [16, 4, 4, 4, 147, 24, 147, 24, 441, 72, 147, 24]


@pytest.mark.parametrize('arch,budget', list(CLASSIFICATION_CONFIGS),
                         ids=lambda v: str(v).replace('/', 'd'))
def test_released_classifier_converts_and_loads_strict(arch, budget):
    official = official_checkpoint(arch, budget)
    result = convert_official({'model': official, 'epoch': 299})  # arch and budget inferred
    assert (result.target.arch, result.target.budget) == (arch, budget)
    assert result.meta['config'] == CLASSIFICATION_CONFIGS[arch, budget]
    state_dict = result.checkpoint()['state_dict']
    # every official tensor is carried over, values untouched
    assert sum(v.numel() for v in state_dict.values()) == sum(v.numel() for v in official.values())
    model = build_config_model(CLASSIFICATION_CONFIGS[arch, budget])
    model.load_state_dict(state_dict, strict=True)
    loaded = model.state_dict()
    renamed, _ = rename_official(official, result.target)
    for key, (new_key, tensor, _) in renamed.items():
        assert torch.equal(loaded[new_key].flatten(), tensor.flatten()), (key, new_key)


@pytest.mark.parametrize('arch,budget', list(DETECTION_CONFIGS),
                         ids=lambda v: str(v).replace('/', 'd'))
def test_released_detector_converts_and_loads_strict(arch, budget):
    config = DETECTION_CONFIGS[arch, budget]
    model = build_config_model(config)
    official = official_checkpoint(arch, budget, detection=True)
    # Neck and heads: mmdet 2.x (the release) and 3.x share the Mask R-CNN + FPN names.
    generator = torch.Generator().manual_seed(1)
    official.update((k, torch.randn(v.shape, generator=generator))
                    for k, v in model.state_dict().items() if not k.startswith('backbone.'))
    result = convert_official({'state_dict': official, 'meta': {'epoch': 12}})
    assert (result.target.arch, result.target.budget, result.target.task) == \
        (arch, budget, 'detection')
    assert result.meta['config'] == config
    # the ImageNet classifier inside the release's detection backbones is not part of mmdet's
    assert all(re.search(r'^backbone\.(fc|classifier)\.', k) for k in result.meta['dropped_keys'])
    model.load_state_dict(result.checkpoint()['state_dict'], strict=True)
    assert torch.equal(model.state_dict()['roi_head.bbox_head.fc_cls.weight'],
                       official['roi_head.bbox_head.fc_cls.weight'])


def test_converted_classifier_initialises_the_mask_rcnn_backbone(tmp_path):
    # README step 4: the Mask R-CNN config reads the converted ImageNet checkpoint through its
    # backbone's init_cfg (prefix='backbone.')
    official = official_checkpoint('resnet50', '1x')
    path = save_checkpoint(convert_official({'model': official}), tmp_path / 'kw1x-r50.pth')
    cfg = copy.deepcopy(load_config(DETECTION_CONFIGS['resnet50', '1x']))
    cfg.model.backbone.init_cfg.checkpoint = str(path)
    model = build_model_from_config(cfg)
    model.backbone.init_weights()
    backbone = model.backbone.state_dict()
    assert torch.equal(backbone['warehouse_manager.weights.2'],
                       official['warehouse_manager.weights.2'])
    assert torch.equal(backbone['layer4.2.conv3.attention.fc2.weight'],
                       official['layer4.2.conv3.attention.fc2.weight'])


def test_detector_checked_in_full_against_a_config():
    config = load_config(DETECTION_CONFIGS['mobilenetv2_100', '1x'])
    official = official_checkpoint('mobilenetv2_100', '1x', detection=True)
    official.update((k, torch.zeros(v.shape)) for k, v in
                    build_config_model(DETECTION_CONFIGS['mobilenetv2_100', '1x'])
                    .state_dict().items() if not k.startswith('backbone.'))
    official['neck.lateral_convs.0.conv.weight'] = torch.zeros(256, 25, 1, 1)
    with pytest.raises(ConversionError, match=r"'neck\.lateral_convs\.0\.conv\.weight'.*"
                       r'\[256, 25, 1, 1\].*needs \[256, 24, 1, 1\]'):
        convert_official({'state_dict': official}, config=config)
    del official['neck.lateral_convs.0.conv.weight']
    with pytest.raises(ConversionError, match=r"needs 'neck\.lateral_convs\.0\.conv\.weight'"):
        convert_official({'state_dict': official}, config=config)


def test_key_mapping_per_family():
    """Spot checks of the renaming against the release's module paths."""
    cases = {
        ('resnet50', '1/2x'): {
            'layer2.0.conv1.attention.fc3.weight': 'backbone.layer2.0.conv1.attention.fc3.weight',
            'layer2.0.downsample.1.running_var': 'backbone.layer2.0.downsample.1.running_var',
            'warehouse_manager.weights.3': 'backbone.warehouse_manager.weights.3',
            'fc.weight': 'head.fc.weight'},
        ('mobilenetv2_100', '1/2x'): {
            'features.0.0.attention.fc1.weight': 'backbone.conv1.conv.attention.fc1.weight',
            'features.0.1.running_mean': 'backbone.conv1.bn.running_mean',
            'features.1.conv.0.0.attention.fc2.bias':
            'backbone.layer1.0.conv.0.conv.attention.fc2.bias',
            'features.1.conv.1.weight': 'backbone.layer1.0.conv.1.conv.weight',
            'features.1.conv.2.weight': 'backbone.layer1.0.conv.1.bn.weight',
            'features.3.conv.1.1.bias': 'backbone.layer2.1.conv.1.bn.bias',
            'features.3.conv.3.num_batches_tracked':
            'backbone.layer2.1.conv.2.bn.num_batches_tracked',
            'features.17.conv.2.attention.fc1.weight':
            'backbone.layer7.0.conv.2.conv.attention.fc1.weight',
            'features.18.1.weight': 'backbone.conv2.bn.weight',
            'classifier.1.conv.attention.norm1.running_var':
            'head.fc.attention.norm1.running_var',
            'classifier.1.conv.bias': 'head.fc.bias',
            'warehouse_manager.weights.8': 'backbone.warehouse_manager.weights.8',
            'warehouse_manager.weights.9': 'head.warehouse_manager.weights.0'},
        ('convnext_tiny', '1x'): {
            'downsample_layers.0.0.attention.fc1.bias':
            'backbone.downsample_layers.0.0.attention.fc1.bias',
            'stages.2.8.dwconv.bias': 'backbone.stages.2.8.depthwise_conv.bias',
            'stages.3.2.pwconv2.attention.norm1.weight':
            'backbone.stages.3.2.pointwise_conv2.attention.norm1.weight',
            'stages.0.0.gamma': 'backbone.stages.0.0.gamma',
            'norm.weight': 'backbone.norm3.weight', 'head.bias': 'head.fc.bias'},
    }
    for (arch, budget), expected in cases.items():
        official = official_checkpoint(arch, budget)
        target = convert_official(official).target
        renamed, _ = rename_official(official, target)
        for key, new_key in expected.items():
            assert renamed[key][0] == new_key, (key, renamed[key][0])
    result = convert_official(official_checkpoint('convnext_tiny', '1x'))
    assert result.state_dict['backbone.stages.0.0.gamma'].shape == (96, )  # was [1, 96, 1, 1]
    result = convert_official(official_checkpoint('mobilenetv2_100', '1/2x'))
    assert result.state_dict['head.warehouse_manager.weights.0'].shape == (20, 1000, 32, 1, 1)


@pytest.mark.parametrize('arch', ['resnet18', 'mobilenetv2_100'])
def test_plain_layout_is_numerically_mmpretrains(arch):
    """torchvision's ResNet-18 and MobileNetV2 have exactly the module paths of the release's
    plain models (and the KW models' paths but for the attentions), so their converted weights
    must give the same logits in the mmpretrain model of the baseline config."""
    import torchvision
    torch.manual_seed(0)
    reference = (torchvision.models.resnet18() if arch == 'resnet18'
                 else torchvision.models.mobilenet_v2())
    for module in reference.modules():
        if isinstance(module, nn.BatchNorm2d):  # non-trivial statistics and affine params
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    reference.eval()
    result = convert_official(reference.state_dict())
    assert (result.target.arch, result.target.budget) == (arch, None)
    model = build_config_model(CLASSIFICATION_CONFIGS[arch, None]).eval()
    model.load_state_dict(result.checkpoint()['state_dict'], strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x, mode='tensor'), reference(x), atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------- refusals and inference
def test_wrong_budget_names_the_first_mismatch():
    official = official_checkpoint('resnet18', '1x')
    with pytest.raises(ConversionError) as error:
        convert_official(official, budget='2x')
    message = str(error.value)
    assert "'warehouse_manager.weights.0'" in message
    assert '[56, 64, 64, 1, 1]' in message and '[112, 64, 64, 1, 1]' in message
    with pytest.raises(ConversionError, match=r"resnet50.*'warehouse_manager\.weights\.0'"):
        convert_official(official, arch='resnet50', budget='1x')


def test_undetectable_architecture_or_budget_asks_for_them():
    with pytest.raises(ConversionError, match='--arch'):
        convert_official({'blocks.0.weight': torch.zeros(3)})
    official = official_checkpoint('resnet18', '1/4x')
    official['warehouse_manager.weights.1'] = torch.zeros(50, 64, 64, 1, 1)
    with pytest.raises(ConversionError, match=r'cannot infer the budget.*--budget'):
        convert_official(official)
    with pytest.raises(ConversionError, match='unknown --arch'):
        convert_official(official, arch='vgg16')


def test_checkpoint_entries_and_prefixes(tmp_path):
    official = official_checkpoint('resnet18', '1/4x')
    ema = official_checkpoint('resnet18', '1/4x', seed=1)
    wrapped = {'model': {f'module.{k}': v for k, v in official.items()}, 'model_ema': ema}
    result = convert_official(wrapped)
    assert result.meta['source_key'] == 'model'
    assert any('model_ema' in note for note in result.notes)
    assert torch.equal(result.state_dict['head.fc.weight'], official['fc.weight'])
    result = convert_official(wrapped, key='model_ema')
    assert torch.equal(result.state_dict['head.fc.weight'], ema['fc.weight'])
    # a pickled object beyond the release's argparse.Namespace needs an explicit opt-in
    path = tmp_path / 'official.pth'
    torch.save({'model': official, 'args': argparse.Namespace(path=Path('/data'))}, path)
    with pytest.raises(ConversionError, match='--trust-checkpoint'):
        convert_official(path)
    assert convert_official(path, trust=True).target.budget == '1/4x'


def test_cli_converts_a_release_checkpoint(tmp_path, capsys):
    official = official_checkpoint('resnet18', '1/4x')
    src = tmp_path / 'kw1d4x_resnet18.pth'
    # the release's training checkpoint: weights, optimizer state and the argparse args
    torch.save({'model': official, 'optimizer': {'state': {}, 'param_groups': []}, 'epoch': 299,
                'args': argparse.Namespace(model='kw_resnet18', cell_num_ratio=0.25, lr=4e-3)},
               src)
    dst = tmp_path / 'out' / 'kw1d4x_resnet18_mmkw.pth'
    run = subprocess.run([sys.executable, str(TOOL), str(src), str(dst)], capture_output=True,
                         text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    config = CLASSIFICATION_CONFIGS['resnet18', '1/4x']
    assert f'python tools/test.py {config} {dst}' in run.stdout
    checkpoint = torch.load(dst, weights_only=True)
    assert checkpoint['meta']['budget'] == '1/4x' and checkpoint['meta']['arch'] == 'resnet18'
    build_config_model(config).load_state_dict(checkpoint['state_dict'], strict=True)
    # errors: a message naming the key, exit status 1, no traceback
    spec = importlib.util.spec_from_file_location('kw_official_to_mmkw', TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([str(src), str(tmp_path / 'bad.pth'), '--budget', '1/2x']) == 1
    assert "'warehouse_manager.weights.0'" in capsys.readouterr().err
    assert not (tmp_path / 'bad.pth').exists()


def test_saved_checkpoint_is_weights_only_safe(tmp_path):
    result = convert_official(official_checkpoint('mobilenetv2_050', '1/2x'))
    path = save_checkpoint(result, tmp_path / 'kw.pth')
    checkpoint = torch.load(path, weights_only=True)
    assert set(checkpoint) == {'state_dict', 'meta'}
    assert checkpoint['meta']['converted_from'] == 'OSVAI/KernelWarehouse'
    assert list(checkpoint['state_dict']) == list(expected_shapes(result.target))
    assert result.target == Target('mobilenetv2_050', '1/2x')
