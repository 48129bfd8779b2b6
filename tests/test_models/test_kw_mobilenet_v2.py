"""KWMobileNetV2 and KWLinearClsHead: release parameter counts, Table 14 warehouses, the
release's sharing, mmdet/mmpretrain interface (outputs, frozen_stages, norm_eval, registries)."""
import pytest
import torch
import torch.nn as nn

import mmkw  # noqa: F401  (registers the modules)
from mmkw.models import KWLinearClsHead, KWMobileNetV2
from mmkw.ops import KWConv2d, set_temperature

pytestmark = pytest.mark.usefixtures('one_thread')

# (widen factor, budget): params (M) with a 1000-class head (the release; the KW classifier
# for 1/2x), cells n and mixtures mt per warehouse. For 1.0x n and mt are Table 14's; the
# table repeats them for 0.5x, whose narrower layers give other gcds (the totals are the
# release's).
RELEASE = [
    (1.0, '1/2x', 2.65, [9, 36, 18, 27, 36, 27, 6, 27, 40], [9, 36, 18, 27, 36, 27, 12, 27, 80]),
    (1.0, '1x', 5.17, [9, 36, 34, 78, 18, 42, 27, 102, 36, 120, 27, 58, 27],
     [9, 36, 34, 78, 18, 42, 27, 102, 36, 120, 27, 58, 27]),
    (1.0, '4x', 11.38, [36, 144, 44, 4, 8, 72, 28, 12, 108, 16, 16, 144, 36, 12, 108, 44, 12, 108,
                        80],
     [9, 36, 11, 1, 2, 18, 7, 3, 27, 4, 4, 36, 9, 3, 27, 11, 3, 27, 20]),
    (0.5, '1/2x', 1.47, [9, 36, 18, 27, 36, 27, 6, 27, 56], [9, 36, 18, 27, 36, 27, 12, 27, 112]),
    (0.5, '1x', 2.85, [9, 36, 20, 24, 18, 42, 27, 102, 36, 120, 27, 74, 27],
     [9, 36, 20, 24, 18, 42, 27, 102, 36, 120, 27, 74, 27]),
    (0.5, '4x', 4.65, [36, 144, 28, 4, 8, 72, 8, 12, 108, 16, 16, 144, 36, 12, 108, 44, 12, 108,
                       112],
     [9, 36, 7, 1, 2, 18, 2, 3, 27, 4, 4, 36, 9, 3, 27, 11, 3, 27, 28]),
]


def num_params(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def classifier(backbone: KWMobileNetV2, budget) -> nn.Module:
    if budget == '1/2x':
        return KWLinearClsHead(1000, backbone.feat_dim)
    return nn.Linear(backbone.feat_dim, 1000)


@pytest.mark.parametrize('widen,budget,params,cells,mixtures', RELEASE)
def test_release_parameter_counts_and_table14(widen, budget, params, cells, mixtures):
    model = KWMobileNetV2(widen, budget=budget)
    assert abs(num_params(model, classifier(model, budget)) / 1e6 - params) < 0.01
    summary = model.warehouse_manager.summary()
    assert [row['n'] for row in summary] == cells
    assert [row['mt'] for row in summary] == mixtures


def test_half_budget_classifier_warehouse():
    head = KWLinearClsHead(1000, 1280)
    (row, ) = head.warehouse_manager.summary()
    # Table 14's last 1/2x warehouse: m = 40, n = 20 cells of 1000 x 32 (A.3)
    assert (row['mt'], row['n'], row['cell_shape']) == (40, 20, [1000, 32, 1, 1])
    assert head.fc.attention.fc1.out_features == 40  # reduction 1/32 of 1280 channels


@pytest.mark.parametrize('widen,params', [(1.0, 3.50), (0.5, 1.97)])
def test_plain_network_is_mmpretrains(widen, params):
    from mmpretrain.models import MobileNetV2
    ours = KWMobileNetV2(widen, budget=None, out_indices=(1, 2, 4, 7)).eval()
    assert abs(num_params(ours, nn.Linear(1280, 1000)) / 1e6 - params) < 0.01
    ref = MobileNetV2(widen, out_indices=(1, 2, 4, 7))
    ref.eval()  # its train() returns None
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(ours(x), ref(x)):
            torch.testing.assert_close(a, b)


def test_release_sharing():
    names = {n: m.warehouse_name for n, m in KWMobileNetV2(budget='1x').named_modules()
             if isinstance(m, KWConv2d)}
    assert names['conv1.conv'] == 'stem'
    # a layer that opens a KW stage hands its first block to the previous one (Table 15 rule)
    assert names['layer2.0.conv.0.conv'] == 'stage1_pw'
    assert names['layer2.0.conv.1.conv'] == 'stage1_dw'
    assert names['layer2.1.conv.0.conv'] == 'stage2_pw'
    assert names['layer6.0.conv.2.conv'] == 'stage5_pw'
    # the 160- and 320-channel layers share KW stage 6, which also takes the last 1x1 conv
    assert names['layer7.0.conv.0.conv'] == 'stage6_pw'
    assert names['conv2.conv'] == 'stage6_pw'
    names = {n: m.warehouse_name for n, m in KWMobileNetV2(budget='4x').named_modules()
             if isinstance(m, KWConv2d)}
    assert names['layer3.0.conv.0.conv'] == 'stage2_expand'
    assert names['layer3.0.conv.2.conv'] == 'stage2_linear'
    assert names['conv2.conv'] == 'stage6_linear'
    half = KWMobileNetV2(budget='1/2x')
    assert half.layout == 'dw_last_pw'
    assert isinstance(half.conv1.conv, KWConv2d) and half.conv1.conv.warehouse_name == 'stem'
    # only the pointwise convs of KW stage 6 are KW convs; depthwise convs everywhere
    assert type(half.layer6[0].conv[0].conv) is nn.Conv2d
    assert isinstance(half.layer6[0].conv[1].conv, KWConv2d)
    assert isinstance(half.layer6[1].conv[0].conv, KWConv2d)
    assert isinstance(half.conv2.conv, KWConv2d)
    budgets = {row['name']: row['b'] for row in half.warehouse_manager.summary()}
    assert budgets['stage3_dw'] == 1 and budgets['stage6_expand'] == 0.5
    assert half.layer1[0].conv[0].conv.attention.fc1.out_features == 16  # reduction 1/32


def test_outputs_match_mmdet_mobilenet_v2_shapes():
    from mmdet.models.backbones import MobileNetV2
    x = torch.randn(1, 3, 64, 64)
    for widen in (1.0, 0.5):
        ours = KWMobileNetV2(widen, budget='1x', out_indices=tuple(range(8))).eval()
        ref = MobileNetV2(widen, out_indices=tuple(range(8)))
        ref.eval()
        with torch.no_grad():
            assert [o.shape for o in ours(x)] == [o.shape for o in ref(x)]


@pytest.mark.parametrize('budget', ['1/2x', '1x', '4x'])
def test_forward_backward(budget):
    model = KWMobileNetV2(budget=budget, out_indices=(1, 2, 4, 7))
    head = KWLinearClsHead(1000, model.feat_dim) if budget == '1/2x' else None
    model.init_weights()
    model.train()
    set_temperature(model, 0.5)
    outs = model(torch.randn(2, 3, 32, 32))
    assert [o.shape[1] for o in outs] == [24, 32, 96, 1280]
    loss = sum(o.mean() for o in outs)
    if head is not None:
        set_temperature(head, 0.5)
        logits = head((outs[-1].mean((2, 3)), ))
        assert logits.shape == (2, 1000)
        loss = loss + logits.mean()
    loss.backward()
    for module in (model, head) if head is not None else (model, ):
        missing = [n for n, p in module.named_parameters() if p.grad is None]
        assert not missing, missing


def test_frozen_stages_freeze_their_warehouses():
    model = KWMobileNetV2(budget='1x', frozen_stages=2, out_indices=(7, ))
    model.train()
    model(torch.randn(2, 3, 32, 32))[0].mean().backward()
    for module in (model.conv1, model.layer1, model.layer2):
        assert not module.training
        assert all(not p.requires_grad and p.grad is None for p in module.parameters())
    assert model.layer3.training
    frozen = {row['name']: not w.requires_grad
              for row, w in zip(model.warehouse_manager.summary(), model.warehouse_manager.weights)}
    # layer2.1 draws from stage 2, which layer3.0 shares: frozen too, its attention still learns
    assert frozen == {'stem': True, 'stage1_dw': True, 'stage1_pw': True, 'stage2_pw': True,
                      'stage2_dw': True, 'stage3_pw': False, 'stage3_dw': False,
                      'stage4_pw': False, 'stage4_dw': False, 'stage5_pw': False,
                      'stage5_dw': False, 'stage6_pw': False, 'stage6_dw': False}
    assert model.layer3[0].conv[0].conv.attention.fc2.weight.grad is not None
    assert model.warehouse_manager.weights[5].grad is not None  # stage3_pw


def test_norm_eval_keeps_bn_statistics():
    model = KWMobileNetV2(budget='1x', norm_eval=True)
    model.train()
    stats = {n: b.clone() for n, b in model.named_buffers() if 'running_mean' in n}
    assert any('attention' in n for n in stats)
    model(torch.randn(2, 3, 32, 32))
    for name, value in model.named_buffers():
        if name in stats:
            assert torch.equal(stats[name], value), name


@pytest.mark.parametrize('scope', ['mmdet', 'mmpretrain'])
def test_builds_from_both_registries(scope):
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmpretrain.registry import MODELS
    backbone = MODELS.build(dict(type='KWMobileNetV2', budget='4x', out_indices=(1, 2, 4, 7)))
    assert isinstance(backbone, KWMobileNetV2)


def test_image_classifier_with_kw_head():
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    from mmpretrain.structures import DataSample
    # other tests may leave mmdet as the default scope
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(dict(
            type='ImageClassifier',
            backbone=dict(type='KWMobileNetV2', budget='1/2x', widen_factor=0.5),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='KWLinearClsHead', num_classes=10, in_channels=1280,
                      loss=dict(type='CrossEntropyLoss'))))
    model.train()
    # one tau for the whole model, head included (what KWTemperatureHook does)
    assert set_temperature(model, 0.3) == set_temperature(model.backbone, 0.3) + 1
    samples = [DataSample().set_gt_label(1), DataSample().set_gt_label(7)]
    losses = model(torch.randn(2, 3, 32, 32), samples, mode='loss')
    losses['loss'].backward()
    assert model.head.warehouse_manager.weights[0].grad is not None
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32), mode='tensor').shape == (2, 10)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match='out_indices'):
        KWMobileNetV2(out_indices=(8, ))
    with pytest.raises(ValueError, match='frozen_stages'):
        KWMobileNetV2(frozen_stages=8)
    with pytest.raises(ValueError, match='layout'):
        KWMobileNetV2(layout='stage')
    with pytest.raises(ValueError, match='pooled features'):
        KWLinearClsHead(10, 1280)((torch.randn(2, 1280, 2, 2), ))
