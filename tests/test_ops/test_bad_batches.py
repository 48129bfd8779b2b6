"""Batches a dynamic conv cannot compute as usual (issue 16): a batch of 0 and a batch of one
sample in training.

- Empty batch: every method's conv and every backbone family return empty outputs of the right
  shape, in training and eval mode; the backward pass runs and gives every parameter a zero
  gradient (KW's warehouses included, which DDP expects), and no running statistic changes.
- One sample per device in training: each attention norm that needs batch statistics (KW's
  BatchNorm1d, ODConv's BatchNorm2d, KernelDNA's gate BatchNorm) raises an error that names the
  layer and the ways out, and those ways out (``norm_eval=True``, a gate norm that works on one
  sample, attentions without batch statistics) train on one sample.
"""
import re
from typing import Callable, Dict

import pytest
import torch
import torch.nn as nn

import mmkw  # noqa: F401  (registers the layers)
from mmkw.models import (DynamicConvNeXt, DynamicMobileNetV2, DynamicResNet, KDNAConvNeXt,
                         KDNAMobileNetV2, KDNAResNet, KDNAResNet_CIFAR, KWConvNeXt,
                         KWMobileNetV2, KWResNet, KWResNet_CIFAR)
from mmkw.ops import (DyConv2d, KDNAChildConv2d, KWConv2d, ODConv2d, WarehouseManager)


class KWOwner(nn.Module):
    """A KW conv with the manager that builds its warehouse (as a backbone owns both)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, groups: int = 1,
                 extra_heads: bool = False) -> None:
        super().__init__()
        self.warehouse_manager = WarehouseManager('1x', attention_extra_heads=extra_heads)
        self.conv = KWConv2d(in_channels, out_channels, kernel, 1, kernel // 2, groups=groups,
                             bias=True, warehouse_manager=self.warehouse_manager,
                             warehouse_name='w')
        self.warehouse_manager.build(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class KDNAOwner(nn.Module):
    """A KernelDNA child and the parent conv it derives its kernel from."""

    def __init__(self, gate_norm_cfg: dict = dict(type='BN')) -> None:
        super().__init__()
        self.parent = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.child = KDNAChildConv2d(16, 16, 3, padding=1, parent=self.parent,
                                     gate_norm_cfg=gate_norm_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.child(self.parent(x))


# every method's conv, on 16 input channels
CONVS: Dict[str, Callable[[], nn.Module]] = {
    'kw-3x3': lambda: KWOwner(16, 32, 3),
    'kw-1x1': lambda: KWOwner(16, 32, 1),
    'kw-depthwise': lambda: KWOwner(16, 16, 3, groups=16),
    'kw-star': lambda: KWOwner(16, 32, 3, extra_heads=True),
    'odconv-4x': lambda: ODConv2d(16, 32, 3, padding=1, kernel_num=4),
    'odconv-1x-1x1': lambda: ODConv2d(16, 32, 1, kernel_num=1),  # the 'plain' path
    'dyconv': lambda: DyConv2d(16, 32, 3, padding=1, groups=2, bias=True),
    'kerneldna': lambda: KDNAOwner(),
}

TINY_CONVNEXT = dict(depths=[1, 1, 1, 1], channels=[16, 32, 64, 128])
# every backbone family and method, small enough for a quick forward on 32x32 inputs
BACKBONES: Dict[str, Callable[[], nn.Module]] = {
    'KWResNet': lambda: KWResNet(18, budget='1x'),
    'KWResNet_CIFAR': lambda: KWResNet_CIFAR(18, budget='1x'),
    'DynamicResNet-KW-r50': lambda: DynamicResNet(50, conv_cfg=dict(type='KW')),
    'DynamicResNet-ODConv': lambda: DynamicResNet(18, conv_cfg=dict(type='ODConv')),
    'DynamicResNet-DyConv': lambda: DynamicResNet(18, conv_cfg=dict(type='DyConv')),
    'DynamicResNet-KWStar': lambda: DynamicResNet(18, conv_cfg=dict(type='KWStar')),
    'KWMobileNetV2': lambda: KWMobileNetV2(widen_factor=0.5, budget='1x'),
    'DynamicMobileNetV2-ODConv': lambda: DynamicMobileNetV2(widen_factor=0.5,
                                                            conv_cfg=dict(type='ODConv')),
    'DynamicMobileNetV2-DyConv': lambda: DynamicMobileNetV2(widen_factor=0.5,
                                                            conv_cfg=dict(type='DyConv')),
    'KWConvNeXt': lambda: KWConvNeXt(TINY_CONVNEXT, budget='1x'),
    'DynamicConvNeXt-plain': lambda: DynamicConvNeXt(TINY_CONVNEXT),
    'KDNAResNet': lambda: KDNAResNet(18),
    'KDNAResNet_CIFAR': lambda: KDNAResNet_CIFAR(18),
    'KDNAMobileNetV2': lambda: KDNAMobileNetV2(widen_factor=0.5),
    'KDNAConvNeXt': lambda: KDNAConvNeXt(TINY_CONVNEXT, n_kids=(1, 1, 1, 1)),
}


def outputs_of(result):
    return [result] if isinstance(result, torch.Tensor) else list(result)


def assert_empty_batch_works(module: nn.Module, in_channels: int, size: int,
                             training: bool) -> None:
    """``module`` on a batch of 0: outputs shaped as for a batch of 2 but with 0 samples, a
    backward pass that gives every parameter a zero gradient, running statistics unchanged."""
    module.eval()
    with torch.no_grad():
        reference = outputs_of(module(torch.randn(2, in_channels, size, size)))
    expected = [out.shape[1:] for out in reference]
    module.train(training)
    buffers = {name: b.clone() for name, b in module.named_buffers()}
    x = torch.randn(0, in_channels, size, size, requires_grad=True)
    outs = outputs_of(module(x))
    assert [out.shape for out in outs] == [torch.Size([0, *shape]) for shape in expected]
    sum(out.sum() for out in outs).backward()
    assert x.grad is not None and x.grad.shape == x.shape
    for name, param in module.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, f'{name} got no gradient'
            assert torch.count_nonzero(param.grad) == 0, name
    for name, buffer in module.named_buffers():
        if buffer.is_floating_point():
            assert torch.equal(buffer, buffers[name]), f'{name} changed on an empty batch'


@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('name', list(CONVS))
def test_every_method_conv_takes_an_empty_batch(name, training):
    torch.manual_seed(0)
    assert_empty_batch_works(CONVS[name](), 16, 9, training)


@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('name', list(BACKBONES))
def test_every_backbone_takes_an_empty_batch(name, training, one_thread):
    torch.manual_seed(0)
    assert_empty_batch_works(BACKBONES[name](), 3, 32, training)


# ---------------------------------------------------------------- one sample in training
ONE_SAMPLE_ERRORS = {
    # conv, the message's layer name, and the attention norm's type
    'kw': (lambda: KWOwner(16, 32, 3), r"KW attention of a 16->32 3x3 conv in warehouse 'w'",
           'BatchNorm1d'),
    'kw-star': (lambda: KWOwner(16, 32, 3, extra_heads=True), r'KW attention of a 16->32',
                'BatchNorm1d'),
    'odconv': (lambda: ODConv2d(16, 32, 3, padding=1), r'ODConv attention of a 16->32 3x3 conv',
               'BatchNorm2d'),
    'kerneldna': (lambda: KDNAOwner(), r'KernelDNA SE gate \(16 -> 4 channels',
                  'BatchNorm2d'),
}


@pytest.mark.parametrize('name', list(ONE_SAMPLE_ERRORS))
def test_one_sample_in_training_names_the_layer_and_the_remedies(name):
    build, layer, norm = ONE_SAMPLE_ERRORS[name]
    module = build().train()
    x = torch.randn(1, 16, 9, 9)
    with pytest.raises(ValueError) as error:
        module(x)
    message = str(error.value)
    assert re.match(layer, message), message
    for remedy in (norm, 'one sample', 'norm_eval=True', 'SyncBN', "sync_bn='torch'"):
        assert remedy in message, (remedy, message)
    # the same layer on two samples, or on one in eval mode, runs
    module(torch.randn(2, 16, 9, 9))
    module.eval()(x)


def test_kerneldna_error_names_its_one_sample_gate_norm():
    with pytest.raises(ValueError, match=r"gate_norm_cfg=dict\(type='GN', num_groups=1\)"):
        KDNAOwner().train()(torch.randn(1, 16, 9, 9))


# the documented ways to train on one sample per device, each on a backbone that needs one
ONE_SAMPLE_OPTIONS = {
    'KW, norm_eval': lambda: KWResNet_CIFAR(18, budget='1x', norm_eval=True),
    'ODConv, norm_eval': lambda: DynamicResNet(18, conv_cfg=dict(type='ODConv'),
                                               norm_eval=True),
    'KernelDNA, norm_eval': lambda: KDNAResNet_CIFAR(18, norm_eval=True),
    'KernelDNA, GN gate norm': lambda: KDNAResNet_CIFAR(
        18, gate_norm_cfg=dict(type='GN', num_groups=1)),
    'DY-Conv, no attention norm': lambda: DynamicResNet(18, conv_cfg=dict(type='DyConv')),
    'KW ConvNeXt, LayerNorm attentions': lambda: KWConvNeXt(TINY_CONVNEXT, budget='1x'),
}


@pytest.mark.parametrize('name', list(ONE_SAMPLE_OPTIONS))
def test_documented_options_train_on_one_sample(name, one_thread):
    backbone = ONE_SAMPLE_OPTIONS[name]().train()
    # 64x64: the ImageNet ResNets reach a 2x2 map, where their own BatchNorms have 4 values
    outs = outputs_of(backbone(torch.randn(1, 3, 64, 64)))
    sum(out.sum() for out in outs).backward()
    grads = [p.grad for p in backbone.parameters() if p.requires_grad]
    assert any(g is not None and torch.count_nonzero(g) for g in grads)


@pytest.mark.parametrize('name', ['KW, norm_eval', 'ODConv, norm_eval', 'KernelDNA, norm_eval'])
def test_the_same_backbones_without_the_option_refuse_one_sample(name, one_thread):
    """The counterpart of the test above: without norm_eval the attention norms use batch
    statistics and refuse one sample with the named error."""
    backbone = ONE_SAMPLE_OPTIONS[name]()
    backbone.norm_eval = False
    with pytest.raises(ValueError, match='one sample in training mode'):
        backbone.train()(torch.randn(1, 3, 32, 32))
