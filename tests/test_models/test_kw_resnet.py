"""KWResNet: release parameter counts, Table 14 warehouses, Table 15 sharing, mmdet/mmpretrain
interface (registries, out_indices, frozen_stages, norm_eval)."""
import pytest
import torch
import torch.nn as nn

import mmkw  # noqa: F401  (registers the modules)
from mmkw.models import KWResNet, KWResNet_CIFAR
from mmkw.ops import KWConv2d, set_temperature

# (depth, budget, nonlocal basis ratio): params with a 1000-class head (release), n per stage
# and mt per stage (paper Table 14)
RELEASE = [
    (18, '1/4x', 1.0, 4.03, [56, 47, 47, 27], [224, 188, 188, 108]),
    (18, '1/2x', 1.0, 7.43, [112, 94, 94, 54], [224, 188, 188, 108]),
    (18, '1x', 1.0, 11.93, [56, 47, 47, 27], [56, 47, 47, 27]),
    (18, '2x', 1.0, 23.24, [112, 94, 94, 54], [56, 47, 47, 27]),
    (18, '4x', 1.0, 45.86, [224, 188, 188, 108], [56, 47, 47, 27]),
    (50, '1/2x', 1 / 16, 17.64, [174, 208, 276, 94], [348, 416, 552, 188]),
    (50, '1x', 1.0, 28.05, [87, 104, 138, 47], [87, 104, 138, 47]),
    (50, '4x', 1.0, 102.02, [348, 416, 552, 188], [87, 104, 138, 47]),
]


def classifier_params(backbone: KWResNet, num_classes: int = 1000) -> int:
    head = nn.Linear(backbone.feat_dim, num_classes)
    return sum(p.numel() for p in backbone.parameters()) + sum(p.numel() for p in head.parameters())


@pytest.mark.parametrize('depth,budget,basis,params,cells,mixtures', RELEASE)
def test_release_parameter_counts_and_table14(depth, budget, basis, params, cells, mixtures):
    model = KWResNet(depth, budget=budget, nonlocal_basis_ratio=basis)
    assert abs(classifier_params(model) / 1e6 - params) < 0.01
    summary = model.warehouse_manager.summary()
    assert [row['n'] for row in summary] == cells
    assert [row['mt'] for row in summary] == mixtures
    assert [row['name'] for row in summary] == ['stage0', 'stage1', 'stage2', 'stage3']


def test_table15_stage_reassignment():
    model = KWResNet(18)
    names = {name: m.warehouse_name for name, m in model.named_modules() if isinstance(m, KWConv2d)}
    assert names['layer1.0.conv1'] == 'stage0'
    assert names['layer2.0.conv1'] == 'stage0' and names['layer2.0.downsample.0'] == 'stage0'
    assert names['layer2.0.conv2'] == 'stage1' and names['layer2.1.conv1'] == 'stage1'
    assert names['layer4.0.conv1'] == 'stage2' and names['layer4.1.conv2'] == 'stage3'
    assert isinstance(model.conv1, nn.Conv2d)
    r50 = KWResNet(50)
    # stage 0 of a Bottleneck ResNet: conv1 of the first block and the stride-1 downsample
    # stay normal convs (the paper's "all layers except the first two")
    assert type(r50.layer1[0].conv1) is nn.Conv2d
    assert type(r50.layer1[0].downsample[0]) is nn.Conv2d
    assert r50.layer2[0].conv1.warehouse_name == 'stage0'
    assert r50.layer2[0].conv2.warehouse_name == 'stage1'
    # the order in which convs take cells is the release's: conv1, conv2, conv3, downsample
    starts = [r50.layer2[0].conv1.attention.start, r50.layer2[0].downsample[0].attention.start]
    assert starts[0] < starts[1]


def test_outputs_match_mmdet_resnet_shapes():
    from mmdet.models.backbones import ResNet
    x = torch.randn(2, 3, 64, 64)
    for depth in (18, 50):
        ours = KWResNet(depth, out_indices=(0, 1, 2, 3)).eval()
        ref = ResNet(depth, out_indices=(0, 1, 2, 3))
        ref.eval()  # mmdet's ResNet.train() returns None, so no chaining
        with torch.no_grad():
            assert [o.shape for o in ours(x)] == [o.shape for o in ref(x)]


def test_small_input_variant():
    model = KWResNet_CIFAR(18, out_indices=(3, ))
    out = model(torch.randn(2, 3, 16, 16))
    assert out[0].shape == (2, 512, 2, 2)
    assert model.conv1.kernel_size == (3, 3) and isinstance(model.maxpool, nn.Identity)
    # its weights fit a detector backbone with a 3x3 stem
    KWResNet(18, stem_kernel_size=3).load_state_dict(model.state_dict(), strict=True)


def test_frozen_stages_and_shared_warehouse():
    model = KWResNet(18, frozen_stages=1, out_indices=(0, 1, 2, 3))
    model.train()
    set_temperature(model, 0.5)
    sum(o.mean() for o in model(torch.randn(2, 3, 32, 32))).backward()
    frozen = [model.conv1, model.bn1, model.layer1]
    for module in frozen:
        for p in module.parameters():
            assert not p.requires_grad and p.grad is None
    assert not model.warehouse_manager.weights[0].requires_grad
    assert model.warehouse_manager.weights[1].grad is not None
    # the entry conv of stage 2 draws from the frozen warehouse 0 but its attention learns
    assert model.layer2[0].conv1.attention.fc2.weight.grad is not None
    assert not model.layer1.training and model.layer2.training


def test_norm_eval_keeps_bn_statistics():
    model = KWResNet(18, norm_eval=True)
    model.train()
    stats = {n: b.clone() for n, b in model.named_buffers() if 'running_mean' in n}
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
    backbone = MODELS.build(dict(type='KWResNet', depth=18, budget='1x', out_indices=(0, 1, 2, 3)))
    assert isinstance(backbone, KWResNet)


def test_drop_path_checkpointing_and_budget_ratio():
    model = KWResNet(18, drop_path_rate=0.1, with_cp=True, budget=3, zero_init_residual=True)
    model.init_weights()
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    model(x)[0].sum().backward()
    assert [row['n'] for row in model.warehouse_manager.summary()] == [168, 141, 141, 81]
    assert model.layer1[0].bn2.weight.abs().sum() == 0


def test_bad_arguments_are_named():
    with pytest.raises(KeyError, match='invalid depth 20'):
        KWResNet(20)
    with pytest.raises(ValueError, match='out_indices'):
        KWResNet(18, out_indices=(4, ))
    with pytest.raises(ValueError, match="style='pytorch'"):
        KWResNet(18, style='caffe')
    with pytest.raises(ValueError, match=r"budget b=1.5"):
        KWResNet(18, budget='1.5x')


def test_checkpoint_of_other_budget_or_depth_is_refused():
    state = KWResNet(18, budget='1x').state_dict()
    with pytest.raises(ValueError, match=r"warehouse_manager.weights.0.*'stage0'"):
        KWResNet(18, budget='2x').load_state_dict(state)
    with pytest.raises(ValueError, match=r'another budget or depth'):
        KWResNet(34, budget='1x').load_state_dict(state)
