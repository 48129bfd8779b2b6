"""KernelDNA backbones: the released models' exact parameter counts (as mmpretrain classifiers),
ConvNeXt's documented counts, the mmdet/mmpretrain interface, deploy folding, the adapter init
from plain checkpoints and the errors for layouts that cannot be built."""
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import mmkw  # noqa: F401  (registers the modules)
from mmkw.converters import ConversionError
from mmkw.converters.kdna_from_plain import init_from_plain
from mmkw.models.backbones import KDNAConvNeXt, KDNAMobileNetV2, KDNAResNet, KDNAResNet_CIFAR
from mmkw.ops import KDNAChildConv2d, KDNAGate, KDNAStaticTerms

REPO = Path(__file__).resolve().parents[2]

# (backbone, classifier head input): parameters with a 1000-class LinearClsHead. The first four
# are the release's models as measured with its code; ConvNeXt is mmkw's design (plain ConvNeXt
# T / S / B: 28,589,128 / 50,223,688 / 88,591,464).
COUNTS = [
    (dict(type='KDNAResNet', depth=18), 512, 9_240_798),
    (dict(type='KDNAResNet', depth=50), 2048, 22_778_060),
    (dict(type='KDNAMobileNetV2', widen_factor=1.0), 1280, 3_136_840),
    (dict(type='KDNAMobileNetV2', widen_factor=0.5), 1280, 1_878_232),
    (dict(type='KDNAConvNeXt', arch='tiny'), 768, 18_343_096),
    (dict(type='KDNAConvNeXt', arch='small'), 768, 23_684_920),
    (dict(type='KDNAConvNeXt', arch='base'), 1024, 41_318_804),
    (dict(type='KDNAConvNeXt', arch='tiny', n_kids=(0, 0, 0, 0)), 768, 28_589_128),
]


def classifier(backbone: dict, in_channels: int) -> nn.Module:
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    convnext = backbone['type'] == 'KDNAConvNeXt'
    with DefaultScope.overwrite_default_scope('mmpretrain'):  # whatever ran before
        return MODELS.build(dict(
            type='ImageClassifier', backbone=backbone,
            neck=None if convnext else dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=1000, in_channels=in_channels)))


@pytest.mark.parametrize('backbone,in_channels,params', COUNTS,
                         ids=[f'{c["type"]}-{list(c.values())[1:]}' for c, _, _ in COUNTS])
def test_parameter_counts_with_a_1000_class_head(backbone, in_channels, params):
    model = classifier(backbone, in_channels)
    assert sum(p.numel() for p in model.parameters()) == params


def test_release_layouts():
    r18 = KDNAResNet(18)
    # six convs per KernelDNA stage, three stored kernels: conv1 own, two parents
    assert len(r18.layer3) == 3 and isinstance(r18.layer3[0].conv2, KDNAChildConv2d)
    assert r18.layer3[0].conv2.parent is r18.layer3[1].conv2
    assert r18.layer3[1].conv1.parent is r18.layer3[1].conv2
    assert r18.layer3[2].conv1.parent is r18.layer3[2].conv2
    assert [c.index for c in (r18.layer4[0].conv2, r18.layer4[1].conv1, r18.layer4[2].conv1)] \
        == [0, 1, 2]
    r50 = KDNAResNet(50)
    assert len(r50.layer3) == 7 and len(r50.layer4) == 3  # ResNet-50 has six and three
    assert r50.layer3[1].conv2.parent is r50.layer3[2].conv2
    assert r50.layer4[1].conv2.parent is r50.layer4[2].conv2
    assert r50.layer4.statics.static_filter_attn.shape == (1, 512, 1, 1, 1)
    mv2 = KDNAMobileNetV2()
    assert [len(getattr(mv2, f'layer{i}')) for i in range(1, 8)] == [1, 2, 3, 4, 3, 3, 1]
    assert mv2.layer4[1].conv[0].conv.parent is mv2.layer4[3].conv[0].conv
    assert mv2.layer4.statics_expand.static_filter_attn.shape == (2, 384, 1, 1, 1)
    assert mv2.layer4.statics_reduce.static_spatial_attn is None  # 1x1: no spatial term
    cnx = KDNAConvNeXt('tiny')
    assert [len(s) for s in cnx.stages] == [3, 3, 9, 3]
    assert cnx.stages[2][4].pointwise_conv2.parent is cnx.stages[2][8].pointwise_conv2


@pytest.mark.parametrize('depth', [34, 101, 152])
def test_documented_rule_for_other_depths(depth):
    model = KDNAResNet(depth)
    expected = {34: (7, 4), 101: (11, 1), 152: (18, 1)}[depth]
    assert model.n_kids == expected
    assert [len(model.layer3), len(model.layer4)] == \
        ([7, 4] if depth == 34 else [2 * expected[0] + 1, 3])


def test_outputs_match_mmdet_backbone_shapes():
    from mmdet.models.backbones import MobileNetV2, ResNet
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for depth in (18, 50):
            ours = KDNAResNet(depth, out_indices=(0, 1, 2, 3)).eval()
            ref = ResNet(depth, out_indices=(0, 1, 2, 3))
            ref.eval()
            assert [o.shape for o in ours(x)] == [o.shape for o in ref(x)]
        ours = KDNAMobileNetV2(out_indices=(1, 2, 4, 7)).eval()
        ref = MobileNetV2(out_indices=(1, 2, 4, 7))
        ref.eval()
        assert [o.shape for o in ours(x)] == [o.shape for o in ref(x)]
        feats = KDNAConvNeXt('tiny', out_indices=(0, 1, 2, 3),
                             gap_before_final_norm=False).eval()(x)
        assert [tuple(f.shape) for f in feats] == [(2, 96, 8, 8), (2, 192, 4, 4),
                                                   (2, 384, 2, 2), (2, 768, 1, 1)]


@pytest.mark.parametrize('scope', ['mmdet', 'mmpretrain'])
def test_builds_from_both_registries(scope):
    from mmengine.registry import DefaultScope
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope(scope):
        for cfg in (dict(type='KDNAResNet', depth=18), dict(type='KDNAMobileNetV2'),
                    dict(type='KDNAConvNeXt', arch='tiny')):
            assert type(MODELS.build(cfg)).__name__ == cfg['type']


def test_frozen_stages_and_norm_eval():
    model = KDNAResNet(18, frozen_stages=1, norm_eval=True, out_indices=(0, 1, 2, 3))
    model.train()
    stats = {n: b.clone() for n, b in model.named_buffers() if 'running_mean' in n}
    sum(o.mean() for o in model(torch.randn(2, 3, 32, 32))).backward()
    for module in (model.conv1, model.bn1, model.layer1):
        assert not module.training
        assert all(not p.requires_grad and p.grad is None for p in module.parameters())
    assert model.layer3.training and model.layer3.statics.static_filter_attn.grad is not None
    gate_norm = model.layer3[0].conv2.gate.norm
    assert not gate_norm.training  # the SE gates' BatchNorms too
    for name, value in model.named_buffers():
        if name in stats:
            assert torch.equal(stats[name], value), name
    convnext = KDNAConvNeXt('tiny', frozen_stages=2)
    convnext.train()
    assert not convnext.stages[1].training and convnext.stages[2].training
    assert not any(p.requires_grad for p in convnext.downsample_layers[1].parameters())


def test_small_input_variant_and_checkpointing():
    model = KDNAResNet_CIFAR(18, with_cp=True)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    out = model(x)
    assert out[0].shape == (2, 512, 2, 2)
    out[0].sum().backward()
    assert model.layer3[1].conv2.weight.grad is not None
    KDNAResNet(18, stem_kernel_size=3).load_state_dict(model.state_dict(), strict=True)


@pytest.mark.parametrize('build', [lambda: KDNAResNet(50), lambda: KDNAMobileNetV2(0.5),
                                   lambda: KDNAConvNeXt('tiny')],
                         ids=['resnet50', 'mobilenet_v2_050', 'convnext_tiny'])
def test_deploy_folding_equals_the_unfolded_model(build):
    torch.manual_seed(0)
    model = build()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, KDNAStaticTerms):
                for param in module.parameters():
                    param.normal_(0, 0.3)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        assert model.fold_static_kernels() > 0
        folded = model(x)
    for a, b in zip(folded, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert model.unfold_static_kernels() > 0


def _randomised(module: nn.Module) -> nn.Module:
    torch.manual_seed(2)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5 if 'running_var' in name
                             else torch.randn_like(tensor))
    return module


def _check_children_start_as_parents(model: nn.Module) -> None:
    children = [m for m in model.modules() if isinstance(m, KDNAChildConv2d)]
    assert children
    for child in children:
        assert torch.equal(child.derived_kernel(), child.parent.weight.view(child.weight_shape))
    for terms in model.modules():
        if isinstance(terms, KDNAStaticTerms):
            assert all(not p.any() for p in terms.parameters())


def test_adapter_init_of_resnet18_from_an_mmpretrain_checkpoint(tmp_path):
    from mmpretrain.models.backbones import ResNet
    plain = _randomised(ResNet(18)).state_dict()
    path = tmp_path / 'resnet18.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in plain.items()}}, path)
    model = KDNAResNet(18, init_cfg=dict(type='KDNAFromPlain', checkpoint=str(path)))
    model.init_weights()
    ours = model.state_dict()
    for key, value in plain.items():  # the unchanged stages and the stem
        if not key.startswith(('layer3', 'layer4')):
            assert torch.equal(ours[key], value), key
    for s in ('layer3', 'layer4'):
        # block 0 is plain block 0; parents P_1, P_2 take plain blocks 0 and 1's conv2 and bn2
        assert torch.equal(ours[f'{s}.0.conv1.weight'], plain[f'{s}.0.conv1.weight'])
        assert torch.equal(ours[f'{s}.0.downsample.0.weight'], plain[f'{s}.0.downsample.0.weight'])
        assert torch.equal(ours[f'{s}.1.conv2.weight'], plain[f'{s}.0.conv2.weight'])
        assert torch.equal(ours[f'{s}.2.conv2.weight'], plain[f'{s}.1.conv2.weight'])
        assert torch.equal(ours[f'{s}.2.bn2.running_var'], plain[f'{s}.1.bn2.running_var'])
        assert torch.equal(ours[f'{s}.1.bn1.weight'], plain[f'{s}.0.bn2.weight'])
    _check_children_start_as_parents(model)
    # block 0 of layer3 now computes plain block 0, up to the SE gate on the child's input
    model.eval()
    with torch.no_grad():
        for gate in model.modules():
            if isinstance(gate, KDNAGate):
                gate.fc2.weight.zero_()
                gate.fc2.bias.fill_(40.0)  # sigmoid = 1: the gate lets everything through
        reference = _randomised(ResNet(18))
        reference.eval()  # mmpretrain's ResNet.train() returns None: no chaining
        x = torch.randn(1, 128, 8, 8)
        torch.testing.assert_close(model.layer3[0](x), reference.layer3[0](x))


def test_adapter_init_of_resnet50_and_the_wrong_depth():
    from mmpretrain.models.backbones import ResNet
    plain = _randomised(ResNet(50)).state_dict()
    model = KDNAResNet(50)
    report = init_from_plain(model, plain, logger=None)
    ours = model.state_dict()
    # seven-block layer3: block b takes plain block min(b, 5) by name
    assert torch.equal(ours['layer3.6.conv3.weight'], plain['layer3.5.conv3.weight'])
    assert torch.equal(ours['layer3.2.conv2.weight'], plain['layer3.2.conv2.weight'])
    assert torch.equal(ours['layer4.2.conv2.weight'], plain['layer4.2.conv2.weight'])
    assert torch.equal(ours['layer4.1.conv1.weight'], plain['layer4.1.conv1.weight'])
    assert 'layer3.1.conv2.weight' in report.unused  # a child has no kernel of its own
    assert any('.gate.' in k for k in report.fresh)
    _check_children_start_as_parents(model)
    with pytest.raises(ConversionError, match=r"'layer1.0.conv1.weight' takes the plain "
                       r"'layer1.0.conv1.weight', whose shape \[64, 64, 1, 1\] differs from "
                       r"\[64, 64, 3, 3\]"):
        init_from_plain(KDNAResNet(18), plain, logger=None)


def test_adapter_init_of_mobilenet_v2_from_torchvision():
    from torchvision.models import mobilenet_v2
    tv = _randomised(mobilenet_v2()).eval()
    model = KDNAMobileNetV2()
    init_from_plain(model, tv.state_dict(), logger=None)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # the unchanged layers compute torchvision's features[:4]
        torch.testing.assert_close(model.layer2(model.layer1(model.conv1(x))), tv.features[:4](x))
    ours = model.state_dict()
    tv_state = tv.state_dict()
    # a child block keeps the plain block's depthwise conv; the parent is the last block
    assert torch.equal(ours['layer4.1.conv.1.conv.weight'], tv_state['features.8.conv.1.0.weight'])
    assert torch.equal(ours['layer4.3.conv.0.conv.weight'], tv_state['features.10.conv.0.0.weight'])
    _check_children_start_as_parents(model)


def test_adapter_init_of_convnext_from_mmpretrain():
    from mmpretrain.models.backbones import ConvNeXt
    plain = _randomised(ConvNeXt('tiny')).state_dict()
    model = KDNAConvNeXt('tiny')
    init_from_plain(model, {'state_dict': {f'backbone.{k}': v for k, v in plain.items()}},
                    logger=None)
    ours = model.state_dict()
    for key in ('stages.2.3.depthwise_conv.weight', 'stages.2.3.gamma',
                'stages.2.3.pointwise_conv1.bias', 'stages.2.8.pointwise_conv2.weight',
                'downsample_layers.3.1.weight', 'norm3.weight'):
        assert torch.equal(ours[key], plain[key]), key
    _check_children_start_as_parents(model)


@pytest.mark.parametrize('build,match', [
    (lambda: KDNAResNet(18, n_kids=(1, 3)), r'layer3: the basic .* n_kids >= 2.*got 1'),
    (lambda: KDNAResNet(50, n_kids=(3, 0)), r"layer4: the 'shared' .* n_kids >= 1, got 0"),
    (lambda: KDNAResNet(50, n_kids=(3, )), r'two integers'),
    (lambda: KDNAMobileNetV2(n_kids=(1, 0, 1, 1)), r'layer4 \(64 channels\).*n_kids >= 1 .*got 0'),
    (lambda: KDNAConvNeXt('tiny', n_kids=(1, 1, -1, 1)), r'n_kids needs 4 numbers >= 0'),
    (lambda: KDNAResNet(20), r'invalid depth 20'),
], ids=['r18-n_kids', 'r50-n_kids', 'r50-n_kids-length', 'mv2-n_kids', 'convnext-n_kids',
        'depth'])
def test_layouts_that_cannot_be_built_are_named(build, match):
    with pytest.raises((ValueError, KeyError), match=match):
        build()


def _short_run(cfg, work_dir):
    """Two iterations, no evaluation, constant lr: the config's model, optimizer and hooks."""
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=2, val_interval=100)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.test_cfg = cfg.test_dataloader = cfg.test_evaluator = None
    cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
    cfg.auto_scale_lr = dict(enable=False, base_batch_size=1)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=100)
    cfg.work_dir = str(work_dir)
    return cfg


@pytest.mark.slow
def test_pretraining_config_runs_through_the_runner(digits_root, tmp_path):
    from mmengine.config import Config
    from mmengine.runner import Runner
    cfg = Config.fromfile(str(REPO / 'configs/kdna_resnet/kdna-resnet18_8xb32-90e_in1k.py'))
    cfg.model.head.num_classes = 10
    cfg.data_preprocessor = dict(num_classes=10, mean=[127.5] * 3, std=[127.5] * 3)
    cfg.train_dataloader = dict(
        batch_size=2, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=True),
        dataset=dict(type='CustomDataset', data_root=str(digits_root), ann_file='meta/train.txt',
                     data_prefix='train', classes=[str(i) for i in range(10)], indices=8,
                     pipeline=[dict(type='LoadImageFromFile'), dict(type='Resize', scale=(32, 32)),
                               dict(type='PackInputs')]))
    runner = Runner.from_cfg(_short_run(cfg, tmp_path))
    before = runner.model.backbone.layer3.statics.static_filter_attn.detach().clone()
    runner.train()
    assert runner.iter == 2
    assert not torch.equal(runner.model.backbone.layer3.statics.static_filter_attn, before)


@pytest.mark.slow
def test_mask_rcnn_config_runs_through_the_runner_with_one_image_per_device(shapes_root,
                                                                            tmp_path):
    from mmengine.config import Config
    from mmengine.runner import Runner
    cfg = Config.fromfile(str(REPO / 'configs/mask_rcnn/mask-rcnn_kdna-r18_fpn_1x_coco.py'))
    cfg.model.backbone.init_cfg = None  # no ImageNet checkpoint here; loading is tested apart
    cfg.model.roi_head.bbox_head.num_classes = 3
    cfg.model.roi_head.mask_head.num_classes = 3
    # one image per device: the SE gates' BatchNorms are in eval mode (norm_eval=True)
    cfg.train_dataloader = dict(
        batch_size=1, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=True),
        dataset=dict(type='CocoDataset', data_root=str(shapes_root) + '/',
                     metainfo=dict(classes=('circle', 'triangle', 'square')),
                     ann_file='annotations/instances_train2017.json',
                     data_prefix=dict(img='train2017/'), indices=2,
                     pipeline=[dict(type='LoadImageFromFile'),
                               dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                               dict(type='Resize', scale=(128, 128), keep_ratio=True),
                               dict(type='PackDetInputs')]))
    runner = Runner.from_cfg(_short_run(cfg, tmp_path))
    runner.train()
    assert runner.iter == 2
