"""tools/model_converters/kdna_official_to_mmkw.py: checkpoints of the official KernelDNA
``main.py`` convert to mmpretrain classifiers that load with strict=True.

The official-layout models are built here from a description of the release's modules (their
attribute names and shapes, written from ``models/KDNA_*.py``; no forward), on top of
torchvision's networks as the release does; the description reproduces the release's parameter
counts. The numerics of the renamed stages are checked against the official fixtures in
``tests/test_ops/test_kerneldna.py``.
"""
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import mmkw  # noqa: F401  (registers the modules)

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / 'tools' / 'model_converters'))
import kdna_official_to_mmkw as tool  # noqa: E402


# ----------------------------------------------------------------- the release's module names
def conv(c_in, c_out, k=1, stride=1, groups=1, bias=False):
    return nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=bias)


class SE(nn.Module):  # SE.se = (gap, fc1, bn, relu, fc2, sigmoid)
    def __init__(self, channels, ratio=4):
        super().__init__()
        hidden = channels // ratio
        self.se = nn.Sequential(OrderedDict(
            gap=nn.AdaptiveAvgPool2d(1), fc1=conv(channels, hidden), bn=nn.BatchNorm2d(hidden),
            relu=nn.ReLU(), fc2=conv(hidden, channels, bias=True), sigmoid=nn.Sigmoid()))


class NewLayer(nn.Module):  # KDNA_ResNet18
    def __init__(self, inplanes, planes, downsample, n_kids=3):
        super().__init__()
        self.conv1, self.bn1 = conv(inplanes, planes, 3, 2), nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.static_spatial_attn = nn.Parameter(torch.zeros(n_kids, 1, 1, 3, 3))
        self.static_filter_attn = nn.Parameter(torch.zeros(n_kids, planes, 1, 1, 1))
        self.se = nn.ModuleList(SE(planes) for _ in range(n_kids))
        self.bns = nn.ModuleList(nn.BatchNorm2d(planes) for _ in range(n_kids))
        self.conv2, self.bn2 = conv(planes, planes, 3), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = conv(planes, planes, 3), nn.BatchNorm2d(planes)


class Block(nn.Module):  # KDNA_ResNet50: layers.*, downsample.{conv,bn}
    def __init__(self, dim, inp=None, stride=1, downsample=False):
        super().__init__()
        inp = inp or 4 * dim
        self.downsample = nn.Sequential(OrderedDict(
            conv=conv(inp, 4 * dim, 1, stride), bn=nn.BatchNorm2d(4 * dim))) \
            if downsample else nn.Identity()
        self.layers = nn.Sequential(OrderedDict(
            conv1=conv(inp, dim), bn1=nn.BatchNorm2d(dim), conv2=conv(dim, dim, 3, stride),
            bn2=nn.BatchNorm2d(dim), conv3=conv(dim, 4 * dim), bn3=nn.BatchNorm2d(4 * dim)))


class BlockShare3x3(nn.Module):  # Block_Share3x3: half1 (conv1, bn1, se), half2 (bn2, conv3, bn3)
    def __init__(self, dim):
        super().__init__()
        self.half1 = nn.Sequential(OrderedDict(conv1=conv(4 * dim, dim), bn1=nn.BatchNorm2d(dim),
                                               se=SE(dim)))
        self.half2 = nn.Sequential(OrderedDict(bn2=nn.BatchNorm2d(dim), conv3=conv(dim, 4 * dim),
                                               bn3=nn.BatchNorm2d(4 * dim)))


class NewLayer3(nn.Module):
    def __init__(self, dim, n=3):
        super().__init__()
        self.block0 = Block(dim, 2 * dim, 2, True)
        self.parents = nn.ModuleList(Block(dim) for _ in range(n))
        self.kids = nn.ModuleList(BlockShare3x3(dim) for _ in range(n))
        self.static_filter_attn = nn.Parameter(torch.zeros(n, dim, 1, 1, 1))
        self.static_spatial_attn = nn.Parameter(torch.zeros(n, 1, 1, 3, 3))


class NewLayer4(nn.Module):
    def __init__(self, dim, n_kids=1):
        super().__init__()
        self.block0 = Block(dim, 2 * dim, 2, True)
        self.blocks = nn.ModuleList(BlockShare3x3(dim) for _ in range(n_kids))
        self.last_block = Block(dim)
        self.static_filter_attn2 = nn.Parameter(torch.zeros(n_kids, dim, 1, 1, 1))
        self.static_spatial_attn = nn.Parameter(torch.zeros(n_kids, 1, 1, 3, 3))


class InvertedResidualLayers(nn.Module):  # TransitionIB / SameIB: layers.{pw1,bn1,dw,bn2,pw2,bn3}
    def __init__(self, inp, oup, stride=1):
        super().__init__()
        hidden = 6 * inp
        self.layers = nn.Sequential(OrderedDict(
            pw1=conv(inp, hidden), bn1=nn.BatchNorm2d(hidden),
            dw=conv(hidden, hidden, 3, stride, hidden), bn2=nn.BatchNorm2d(hidden),
            pw2=conv(hidden, oup), bn3=nn.BatchNorm2d(oup)))


class ShareIB(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dwconv = conv(6 * c, 6 * c, 3, 1, 6 * c)
        self.bn1, self.bn2, self.bn3 = (nn.BatchNorm2d(6 * c), nn.BatchNorm2d(6 * c),
                                        nn.BatchNorm2d(c))
        self.se1, self.se3 = SE(c), SE(6 * c, 24)


class ShareCluster(nn.Module):
    def __init__(self, inp, oup, stride, n_kids):
        super().__init__()
        self.transition = InvertedResidualLayers(inp, oup, stride)
        self.blocks = nn.ModuleList(ShareIB(oup) for _ in range(n_kids))
        self.last_block = InvertedResidualLayers(oup, oup)
        self.static_filter_attn1 = nn.Parameter(torch.zeros(n_kids, 6 * oup, 1, 1, 1))
        self.static_filter_attn3 = nn.Parameter(torch.zeros(n_kids, oup, 1, 1, 1))


def official_model(arch: str) -> nn.Module:
    """The release's ``get_<arch>()`` layout: torchvision's network with its stages replaced."""
    from torchvision import models
    if arch == 'resnet18':
        model = models.resnet18()
        for name, (inplanes, planes) in (('layer3', (128, 256)), ('layer4', (256, 512))):
            setattr(model, name, NewLayer(inplanes, planes, getattr(model, name)[0].downsample))
        return model
    if arch == 'resnet50':
        model = models.resnet50()
        model.layer3, model.layer4 = NewLayer3(256, 3), NewLayer4(512, 1)
        return model
    width = 1.0 if arch == 'mobilenet_v2' else 0.5
    model = models.mobilenet_v2(width_mult=width, dropout=0.0)
    channels = dict(zip((3, 6, 10, 13, 16), (24, 32, 64, 96, 160) if width == 1.0
                        else (16, 16, 32, 48, 80)))
    for first, index, n_kids in ((4, 6, 1), (7, 10, 2), (11, 13, 1), (14, 16, 1)):
        for emptied in range(first, index):
            model.features[emptied] = nn.Sequential()
        previous = max(i for i in channels if i < index)
        model.features[index] = ShareCluster(channels[previous], channels[index],
                                             1 if index == 13 else 2, n_kids)
    return model


RELEASE = {'resnet18': (9_240_798, dict(type='KDNAResNet', depth=18), 512),
           'resnet50': (22_778_060, dict(type='KDNAResNet', depth=50), 2048),
           'mobilenet_v2': (3_136_840, dict(type='KDNAMobileNetV2', widen_factor=1.0), 1280),
           'mobilenet_v2_1d2': (1_878_232, dict(type='KDNAMobileNetV2', widen_factor=0.5), 1280)}


def official_checkpoint(arch: str, path: Path, ddp: bool = True) -> 'OrderedDict':
    torch.manual_seed(0)
    state = official_model(arch).state_dict()
    for value in state.values():
        if value.is_floating_point():
            value.copy_(torch.randn_like(value))
    prefix = 'module.' if ddp else ''
    torch.save({'epoch': 1, 'arch': arch, 'best_acc1': 0.0,
                'state_dict': OrderedDict((prefix + k, v) for k, v in state.items())}, path)
    return state


@pytest.mark.parametrize('arch', sorted(RELEASE))
def test_official_checkpoint_converts_and_loads_strictly(arch, tmp_path, capsys):
    params, backbone, in_channels = RELEASE[arch]
    assert sum(p.numel() for p in official_model(arch).parameters()) == params
    src, dst = tmp_path / 'checkpoint.pth.tar', tmp_path / 'converted.pth'
    official = official_checkpoint(arch, src, ddp=arch != 'resnet50')
    assert tool.main([str(src), str(dst)]) == 0
    assert 'wrote' in capsys.readouterr().out
    converted = torch.load(dst, weights_only=True)
    assert converted['meta']['arch'] == arch

    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmpretrain'):  # whatever ran before
        model = MODELS.build(dict(type='ImageClassifier', backbone=backbone,
                                  neck=dict(type='GlobalAveragePooling'),
                                  head=dict(type='LinearClsHead', num_classes=1000,
                                            in_channels=in_channels)))
    model.load_state_dict(converted['state_dict'], strict=True)
    state = converted['state_dict']
    assert len(state) == len(official)
    pairs = {  # official key -> mmkw key, by the meaning of the release's modules
        'resnet18': [('layer3.conv2.weight', 'layer3.1.conv2.weight'),
                     ('layer3.conv3.weight', 'layer3.2.conv2.weight'),
                     ('layer4.se.0.se.fc1.weight', 'layer4.0.conv2.gate.fc1.weight'),
                     ('layer4.se.2.se.bn.running_var', 'layer4.2.conv1.gate.norm.running_var'),
                     ('layer3.bns.1.weight', 'layer3.1.bn1.weight'),
                     ('layer3.static_spatial_attn', 'layer3.statics.static_spatial_attn'),
                     ('layer2.1.conv2.weight', 'layer2.1.conv2.weight')],
        'resnet50': [('layer3.kids.1.half1.se.se.fc2.bias', 'layer3.3.conv2.gate.fc2.bias'),
                     ('layer3.parents.2.layers.conv2.weight', 'layer3.6.conv2.weight'),
                     ('layer3.block0.downsample.conv.weight', 'layer3.0.downsample.0.weight'),
                     ('layer4.last_block.layers.bn3.bias', 'layer4.2.bn3.bias'),
                     ('layer4.static_filter_attn2', 'layer4.statics.static_filter_attn')],
        'mobilenet_v2': [('features.10.blocks.1.se3.se.fc2.bias',
                          'layer4.2.conv.2.conv.gate.fc2.bias'),
                         ('features.10.last_block.layers.pw1.weight',
                          'layer4.3.conv.0.conv.weight'),
                         ('features.16.static_filter_attn1',
                          'layer6.statics_expand.static_filter_attn'),
                         ('features.17.conv.2.weight', 'layer7.0.conv.2.conv.weight'),
                         ('features.18.1.running_mean', 'conv2.bn.running_mean')],
    }
    pairs['mobilenet_v2_1d2'] = pairs['mobilenet_v2']
    for official_key, ours in pairs[arch]:
        assert torch.equal(state[f'backbone.{ours}'], official[official_key]), official_key
    head = 'fc.weight' if arch.startswith('resnet') else 'classifier.1.weight'
    assert torch.equal(state['head.fc.weight'], official[head])


def test_wrong_architecture_names_the_first_mismatch(tmp_path, capsys):
    src = tmp_path / 'r18.pth.tar'
    official_checkpoint('resnet18', src)
    assert tool.main([str(src), str(tmp_path / 'out.pth'), '--arch', 'resnet50']) == 1
    err = capsys.readouterr().err
    assert ("official key 'layer1.0.conv1.weight' (mmkw name 'backbone.layer1.0.conv1.weight') "
            'has shape [64, 64, 3, 3] but the model needs [64, 64, 1, 1]') in err
    assert not (tmp_path / 'out.pth').exists()


def test_plain_checkpoint_is_refused_with_the_way_out(tmp_path, capsys):
    from torchvision.models import resnet18
    src = tmp_path / 'plain.pth.tar'
    torch.save({'arch': 'resnet18', 'state_dict': resnet18().state_dict()}, src)
    assert tool.main([str(src), str(tmp_path / 'out.pth')]) == 1
    assert 'KDNAFromPlain' in capsys.readouterr().err
