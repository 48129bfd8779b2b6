"""tools/model_converters/odconv_official_to_mmkw.py and mmkw.converters.odconv_official: official
ODConv checkpoints convert to mmpretrain classifiers with DynamicResNet / DynamicMobileNetV2
backbones, load with strict=True and give the official model's logits; mismatches are refused
with the first differing key named.

The official models (``models/od_resnet.py``, ``models/od_mobilenetv2.py`` of OSVAI/ODConv) are
torchvision's ResNet and MobileNetV2 with their convs replaced by ODConv layers (the stem and the
shortcut convs of ResNet stay plain; in MobileNetV2 only the stem does): the tests build them
that way, with mmkw's ODConv2d, whose names and math are the release's (tests/test_ops/
test_odconv.py)."""
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import mmkw  # noqa: F401  (registers the modules)
from mmkw.converters.official import ConversionError
from mmkw.converters.odconv_official import (ODConvTarget, convert_odconv_official,
                                             expected_shapes, save_checkpoint)
from mmkw.ops import ODConv2d

torchvision = pytest.importorskip('torchvision')

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / 'tools' / 'model_converters' / 'odconv_official_to_mmkw.py'

pytestmark = pytest.mark.usefixtures('one_thread')


def odconv_like(conv: nn.Conv2d, kernel_num: int) -> ODConv2d:
    return ODConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, groups=conv.groups, kernel_num=kernel_num)


def official_resnet(depth: int, kernel_num: int, num_classes: int = 10) -> nn.Module:
    """``od_resnet{depth}``: torchvision's ResNet with ODConv block convs."""
    from torchvision.models.resnet import BasicBlock, Bottleneck
    net = getattr(torchvision.models, f'resnet{depth}')(num_classes=num_classes)
    for block in net.modules():
        if isinstance(block, (BasicBlock, Bottleneck)):
            for name in ('conv1', 'conv2', 'conv3'):
                if hasattr(block, name):
                    setattr(block, name, odconv_like(getattr(block, name), kernel_num))
    return net


def official_mobilenet_v2(width: float, kernel_num: int, num_classes: int = 10) -> nn.Module:
    """``od_mobilenetv2_*``: torchvision's MobileNetV2 with every conv after the stem ODConv."""
    net = torchvision.models.mobilenet_v2(width_mult=width, num_classes=num_classes)
    for feature in list(net.features)[1:]:
        for parent in [feature] + list(feature.modules()):
            for name, child in parent.named_children():
                if isinstance(child, nn.Conv2d):
                    setattr(parent, name, odconv_like(child, kernel_num))
    return net


def perturb(net: nn.Module) -> nn.Module:
    """Statistics and affine parameters of every BatchNorm and the attention biases off their
    init, so that a misplaced tensor changes the logits."""
    torch.manual_seed(1)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    for name, param in net.named_parameters():
        if '.attention.' in name and name.endswith('bias'):
            param.data.uniform_(-0.5, 0.5)
    return net.eval()


def released_checkpoint(net: nn.Module) -> dict:
    """As the release's main.py saves it: a DataParallel model's state dict and more."""
    return {'state_dict': {f'module.{k}': v for k, v in net.state_dict().items()},
            'epoch': 120, 'best_acc': torch.tensor(74.2),
            'optimizer': {'state': {}, 'param_groups': []}}


def build_classifier(result, feat_dim: int) -> nn.Module:
    """The mmpretrain ImageClassifier the converted checkpoint is for, built from its meta."""
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS
    init_default_scope('mmpretrain')
    return MODELS.build(dict(
        type='ImageClassifier', backbone=result.meta['backbone'],
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=result.target.num_classes,
                  in_channels=feat_dim)))


@pytest.mark.parametrize('arch, kernel_num', [('resnet18', 1), ('resnet50', 1),
                                              ('mobilenetv2_050', 4), ('mobilenetv2_100', 1)])
def test_release_checkpoint_converts_loads_strict_and_gives_the_same_logits(
        arch, kernel_num, tmp_path):
    torch.manual_seed(0)
    if arch.startswith('resnet'):
        official = official_resnet(int(arch[len('resnet'):]), kernel_num)
    else:
        official = official_mobilenet_v2(int(arch[-3:]) / 100, kernel_num)
    perturb(official)
    path = tmp_path / f'od_{arch}_{kernel_num}x.pth.tar'
    torch.save(released_checkpoint(official), path)
    result = convert_odconv_official(path)
    assert result.target == ODConvTarget(arch, kernel_num, 1 / 16, 10)
    assert result.meta['backbone']['conv_cfg'] == dict(type='ODConv', kernel_num=kernel_num,
                                                       reduction=1 / 16)
    saved = torch.load(save_checkpoint(result, tmp_path / 'mmkw.pth'), weights_only=True)
    classifier = official.fc if arch.startswith('resnet') else official.classifier[1]
    model = build_classifier(result, classifier.in_features).eval()
    model.load_state_dict(saved['state_dict'], strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = official(x)
        torch.testing.assert_close(model(x, mode='tensor'), expected, atol=1e-5, rtol=1e-4)


def test_resnet18_odconv_4x_converts():
    # the KW paper's ODConv (4x) ResNet-18 row (44.9M parameters): names and shapes only
    official = official_resnet(18, 4, num_classes=1000)
    result = convert_odconv_official(released_checkpoint(official))
    assert result.target == ODConvTarget('resnet18', 4)
    assert result.state_dict['backbone.layer4.1.conv2.weight'].shape == (4, 512, 512, 3, 3)
    assert 'backbone.layer2.0.downsample.0.weight' in result.state_dict
    assert list(result.state_dict) == list(expected_shapes(result.target))


def test_wrong_architecture_names_the_first_mismatching_key_and_shapes():
    official = released_checkpoint(official_resnet(18, 1))
    with pytest.raises(ConversionError) as error:
        convert_odconv_official(official, arch='resnet34')
    message = str(error.value)
    assert "resnet34" in message
    # resnet34 has 3 blocks in layer1: the first difference is a key the checkpoint lacks
    assert "'backbone.layer1.2.conv1.weight'" in message and 'lacks' in message
    with pytest.raises(ConversionError) as error:
        convert_odconv_official(official, arch='resnet50')
    message = str(error.value)
    assert "official key 'layer1.0.conv1.weight'" in message
    assert '[1, 64, 64, 3, 3]' in message and '[1, 64, 64, 1, 1]' in message
    with pytest.raises(ConversionError, match=r"ODConv \(4x.*'layer1\.0\.conv1\.weight'.*"
                       r'\[1, 64, 64, 3, 3\] but the model needs \[4, 64, 64, 3, 3\]'):
        convert_odconv_official(official, kernel_num=4)
    with pytest.raises(ConversionError, match='unknown --arch'):
        convert_odconv_official(official, arch='vgg16')


def test_inference_and_refusals():
    official = official_mobilenet_v2(0.5, 4, num_classes=1000)
    result = convert_odconv_official(official.state_dict(), arch='od_mobilenetv2_050')
    assert result.target == ODConvTarget('mobilenetv2_050', 4)
    assert result.state_dict['backbone.layer7.0.conv.2.conv.weight'].shape == (4, 160, 480, 1, 1)
    assert result.state_dict['backbone.conv2.conv.attention.filter_fc.weight'].shape[0] == 1280
    # a plain model of the release converts to the plain backbone of the same names
    plain = convert_odconv_official(torchvision.models.resnet18().state_dict())
    assert plain.target.kernel_num is None and plain.meta['backbone']['conv_cfg'] is None
    with pytest.raises(ConversionError, match='--arch'):
        convert_odconv_official({'blocks.0.weight': torch.zeros(3)})
    with pytest.raises(ConversionError, match='detection checkpoint'):
        convert_odconv_official({'backbone.conv1.weight': torch.zeros(3)})
    state = official.state_dict()
    state['features.1.conv.0.0.attention.fc.weight'] = torch.zeros(15, 16, 1, 1)
    with pytest.raises(ConversionError, match='--reduction'):
        convert_odconv_official(state)
    state = official.state_dict()
    state['features.99.weight'] = torch.zeros(3)
    with pytest.raises(ConversionError, match="official key 'features.99.weight' has no "
                       'counterpart'):
        convert_odconv_official(state)


def test_cli(tmp_path, capsys):
    src = tmp_path / 'od_resnet18_1x.pth.tar'
    torch.save(released_checkpoint(official_resnet(18, 1)), src)
    spec = importlib.util.spec_from_file_location('odconv_official_to_mmkw', TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    dst = tmp_path / 'out' / 'odconv1x-resnet18.pth'
    assert tool.main([str(src), str(dst), '--arch', 'resnet18']) == 0
    out = capsys.readouterr().out
    assert 'ODConv (1x, reduction 0.0625) resnet18 classifier (10 classes)' in out
    checkpoint = torch.load(dst, weights_only=True)
    assert set(checkpoint) == {'state_dict', 'meta'}
    assert checkpoint['meta']['converted_from'] == 'OSVAI/ODConv'
    # errors: the first mismatch named, exit status 1, nothing written
    assert tool.main([str(src), str(tmp_path / 'bad.pth'), '--arch', 'resnet50']) == 1
    assert "'layer1.0.conv1.weight'" in capsys.readouterr().err
    assert not (tmp_path / 'bad.pth').exists()
