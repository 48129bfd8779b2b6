"""The method-agnostic backbones: one ResNet / MobileNetV2 / ConvNeXt for every conv method, with
the ResNet interface of mmpretrain and mmdet (deep_stem, avg_down, dilations, strides,
zero_init_residual, get_layer_depth) and shared freezing / norm_eval."""
import pytest
import torch
import torch.nn as nn
from mmengine.registry import MODELS

import mmkw  # noqa: F401
from mmkw.models import (DynamicConvNeXt, DynamicMobileNetV2, DynamicResNet, KWConvNeXt,
                         KWMobileNetV2, KWResNet, build_conv_method)
from mmkw.ops import DynamicConv2d, KWConv2d


def dynamic_convs(module: nn.Module):
    return {name: type(m).__name__ for name, m in module.named_modules()
            if isinstance(m, DynamicConv2d)}


def test_kw_backbones_are_the_dynamic_backbone_with_kw():
    """KWResNet's arguments and DynamicResNet's conv_cfg build the same network, state dict
    included (the names configs and checkpoints use)."""
    for legacy, generic in (
            (KWResNet(18, budget='1x'), DynamicResNet(18, conv_cfg=dict(type='KW'))),
            (KWMobileNetV2(budget='4x'),
             DynamicMobileNetV2(conv_cfg=dict(type='KW', budget='4x'))),
            (KWConvNeXt('tiny', budget='1x'), DynamicConvNeXt('tiny', conv_cfg=dict(type='KW')))):
        a, b = legacy.state_dict(), generic.state_dict()
        assert list(a) == list(b)
        assert all(a[k].shape == b[k].shape for k in a)
        assert dynamic_convs(legacy) == dynamic_convs(generic)


def test_plain_dynamic_resnet_matches_mmpretrain_resnet_names():
    from mmpretrain.models import ResNet
    ours = DynamicResNet(50).state_dict()
    theirs = ResNet(50).state_dict()
    assert set(ours) == set(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


@pytest.mark.parametrize('method,dynamic,static', [
    # KW (Table 15): the stem and stride-1 shortcuts static, stage 0's first bottleneck conv
    # static (its warehouse stage would be -1)
    (dict(type='KW'), ['layer1.0.conv2', 'layer2.0.downsample.0', 'layer2.0.conv1'],
     ['conv1', 'layer1.0.downsample.0', 'layer1.0.conv1']),
    # ODConv: every block conv, no stem, no shortcut
    (dict(type='ODConv'), ['layer1.0.conv1', 'layer2.0.conv2', 'layer4.2.conv3'],
     ['conv1', 'layer1.0.downsample.0', 'layer2.0.downsample.0']),
    # DY-Conv: everything but the stem
    (dict(type='DyConv'), ['layer1.0.conv1', 'layer1.0.downsample.0', 'layer2.0.downsample.0'],
     ['conv1']),
])
def test_layer_choice_per_method(method, dynamic, static):
    pytest.importorskip('mmkw.ops.odconv') if method['type'] != 'KW' else None
    convs = dynamic_convs(DynamicResNet(50, conv_cfg=method))
    assert set(dynamic) <= set(convs), sorted(set(dynamic) - set(convs))
    assert not set(static) & set(convs)


def test_bad_conv_cfg_is_named():
    with pytest.raises(KeyError, match="unknown conv_cfg type 'Nope'"):
        DynamicResNet(18, conv_cfg=dict(type='Nope'))
    with pytest.raises(TypeError, match='conv_cfg must be None or a dict with a type'):
        DynamicResNet(18, conv_cfg='KW')
    with pytest.raises(ValueError, match='sharing_dims'):
        build_conv_method(dict(type='KW', sharing_dims='diagonal'))
    with pytest.raises(ValueError, match='ResNet ablations'):
        DynamicMobileNetV2(conv_cfg=dict(type='KW', sharing='layer'))
    with pytest.raises(TypeError, match='use DynamicResNet for conv_cfg'):
        KWResNet(18, conv_cfg=dict(type='KW'))


@pytest.mark.parametrize('method', [None, dict(type='KW', budget='1x')])
def test_resnet_interface_options(method):
    torch.manual_seed(0)
    model = DynamicResNet(50, conv_cfg=method, deep_stem=True, avg_down=True,
                          strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2), out_indices=(0, 1, 2, 3),
                          zero_init_residual=True)
    model.init_weights()
    assert [m.conv.kernel_size for m in model.stem] == [(3, 3)] * 3
    assert isinstance(model.layer2[0].downsample[0], nn.AvgPool2d)
    assert model.layer4[0].conv2.dilation == (2, 2) and model.layer4[0].conv2.padding == (2, 2)
    assert all(m.last_norm.weight.abs().sum() == 0 for m in model.modules()
               if hasattr(m, 'last_norm'))
    model.eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 64, 64))
    # stride 1 and dilation 2 in stage 4 keep its map at stride 16
    assert [tuple(o.shape[1:]) for o in outs] == [(256, 16, 16), (512, 8, 8), (1024, 4, 4),
                                                  (2048, 4, 4)]


def test_get_layer_depth_follows_mmpretrain_and_warehouses():
    from mmpretrain.models import ResNet
    for depth in (50, 101):
        ours, theirs = DynamicResNet(depth), ResNet(depth)
        for name, _ in theirs.named_parameters():
            key = 'backbone.' + name
            assert ours.get_layer_depth(key, 'backbone.') == \
                theirs.get_layer_depth(key, 'backbone.'), name
        assert ours.get_layer_depth('head.fc.weight', 'backbone.') == \
            theirs.get_layer_depth('head.fc.weight', 'backbone.')
    model = KWResNet(18, budget='1x')
    depth = model.get_layer_depth
    assert depth('backbone.conv1.weight', 'backbone.') == (0, 8)
    assert depth('backbone.layer1.1.conv1.attention.fc1.weight', 'backbone.') == (1, 8)
    assert depth('backbone.layer3.1.bn2.weight', 'backbone.') == (5, 8)
    assert depth('backbone.layer4.1.bn2.weight', 'backbone.') == (6, 8)
    # a warehouse takes the id of the first conv bound to it: Table 15 hands stage 2's entry
    # convs (layer2.0.conv1, layer2.0.downsample.0) to warehouse 1
    first = model.warehouse_manager.specs['stage1'].conv_names[0]
    assert first.startswith('layer2.0')
    assert depth('backbone.warehouse_manager.weights.1', 'backbone.') == (2, 8)


def test_convnext_layer_depth_is_mmpretrains():
    from mmpretrain.models import ConvNeXt
    ours, theirs = DynamicConvNeXt('tiny'), ConvNeXt('tiny')
    for name, _ in theirs.named_parameters():
        key = 'backbone.' + name
        assert ours.get_layer_depth(key, 'backbone.') == theirs.get_layer_depth(key, 'backbone.')
    kw = KWConvNeXt('tiny')
    index = list(kw.warehouse_manager.specs).index('stage2_dw')
    # the stage-3 depthwise warehouse is first used by stages.2.0, layer 3 of 8
    assert kw.get_layer_depth(f'backbone.warehouse_manager.weights.{index}', 'backbone.') == (3, 8)


def test_layer_wise_lr_decay_with_mmpretrain_constructor():
    from mmpretrain.engine.optimizers import LearningRateDecayOptimWrapperConstructor
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS as CLS_MODELS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = CLS_MODELS.build(dict(
            type='ImageClassifier', backbone=dict(type='KWResNet', depth=18, budget='1x'),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=10, in_channels=512)))
    constructor = LearningRateDecayOptimWrapperConstructor(
        dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1.0, weight_decay=0.05)),
        dict(layer_decay_rate=0.5))
    groups = {id(p): g['lr'] for g in constructor(model).optimizer.param_groups
              for p in g['params']}
    backbone = model.backbone
    assert groups[id(backbone.conv1.weight)] == pytest.approx(0.5**7)
    assert groups[id(backbone.layer4[1].conv2.attention.fc1.weight)] == pytest.approx(0.5**1)
    assert groups[id(backbone.warehouse_manager.weights[1])] == pytest.approx(0.5**5)
    assert groups[id(model.head.fc.weight)] == pytest.approx(1.0)


@pytest.mark.parametrize('build', [
    lambda: DynamicResNet(18, conv_cfg=dict(type='KW'), frozen_stages=2, norm_eval=True),
    lambda: DynamicMobileNetV2(conv_cfg=dict(type='KW'), frozen_stages=2, norm_eval=True),
])
def test_freezing_and_norm_eval_are_shared(build):
    model = build().train()
    frozen = model.frozen_modules()
    assert frozen and all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(not m.training for m in frozen)
    manager = model.warehouse_manager
    used = {c.warehouse_index for m in frozen for c in m.modules() if isinstance(c, KWConv2d)}
    assert used and all(not manager.weights[i].requires_grad for i in used)
    assert all(not m.training for m in model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm))


@pytest.mark.parametrize('scope', ['mmpretrain', 'mmdet'])
def test_generic_backbones_build_from_both_registries(scope):
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope(scope):
        backbone = MODELS.build(dict(type='DynamicResNet', depth=18,
                                     conv_cfg=dict(type='KW', budget='1/2x'), out_indices=(0, 3)))
    assert isinstance(backbone, DynamicResNet)
