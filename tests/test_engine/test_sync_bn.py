"""SyncBN with dynamic convs.

mmengine's ``sync_bn='torch'`` (the Runner calls ``mmengine.model.convert_sync_batchnorm`` on a
distributed run) must reach every BatchNorm of a backbone, the attention norms inside each
dynamic conv included (KW's ``BatchNorm1d`` on ``[B, hidden]``; other methods' BatchNorm2d on
1x1 maps), leave no stale plain BatchNorm referenced anywhere, and keep the state dict
interchangeable with the plain model. torch's SyncBatchNorm cannot train on the CPU backend
(gloo): it refuses CPU tensors once a process group exists, so the 2-process training with it
needs GPUs; here the conversion is tested, and the CPU launcher's refusal of it.
"""
import argparse
import copy
import socket
from typing import Dict, List

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from mmengine.config import Config, DictAction
from mmengine.model import convert_sync_batchnorm, revert_sync_batchnorm
from mmengine.registry import MODEL_WRAPPERS, MODELS
from torch.nn.modules.batchnorm import _BatchNorm

import mmkw  # noqa: F401  (registers the backbones)
from mmkw.engine import setup_distributed

SMALL_CONVNEXT = {'depths': [2, 2, 2, 2], 'channels': [16, 32, 64, 128]}
SMALL_RESNET = dict(depth=18, base_channels=16, stem_channels=16)
# Small builds of every mmkw backbone, one per registered class (the conversion does not depend
# on width or depth). A new method's backbone must be added here (see the coverage test).
BACKBONES = {
    'KWResNet': dict(type='KWResNet', **SMALL_RESNET),
    'KWResNet_CIFAR': dict(type='KWResNet_CIFAR', **SMALL_RESNET),
    'ODConvResNet': dict(type='ODConvResNet', **SMALL_RESNET),
    'DyConvResNet': dict(type='DyConvResNet', **SMALL_RESNET),
    'DynamicResNet': dict(type='DynamicResNet', conv_cfg=dict(type='ODConv'), **SMALL_RESNET),
    'DynamicResNet_CIFAR': dict(type='DynamicResNet_CIFAR', conv_cfg=dict(type='KW'),
                                **SMALL_RESNET),
    'KDNAResNet': dict(type='KDNAResNet', **SMALL_RESNET),
    'KDNAResNet_CIFAR': dict(type='KDNAResNet_CIFAR', **SMALL_RESNET),
    'KWMobileNetV2': dict(type='KWMobileNetV2', widen_factor=0.5, budget='1x'),
    'KWMobileNetV2-1/2x': dict(type='KWMobileNetV2', widen_factor=0.5, budget='1/2x'),
    'ODConvMobileNetV2': dict(type='ODConvMobileNetV2', widen_factor=0.5),
    'DyConvMobileNetV2': dict(type='DyConvMobileNetV2', widen_factor=0.5),
    'DynamicMobileNetV2': dict(type='DynamicMobileNetV2', widen_factor=0.5,
                               conv_cfg=dict(type='KW', budget='1x')),
    'KDNAMobileNetV2': dict(type='KDNAMobileNetV2', widen_factor=0.5),
    'KWConvNeXt': dict(type='KWConvNeXt', arch=SMALL_CONVNEXT),
    'DynamicConvNeXt': dict(type='DynamicConvNeXt', arch=SMALL_CONVNEXT,
                            conv_cfg=dict(type='KW')),
    'KDNAConvNeXt': dict(type='KDNAConvNeXt', arch=dict(SMALL_CONVNEXT, depths=[3, 3, 3, 3])),
    'KWVisionTransformer': dict(
        type='KWVisionTransformer', img_size=64, patch_size=16, budget='1x',
        arch=dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64),
        layout=dict(warehouses=[dict(layers=('value', 'proj')), dict(layers=('fc1', 'fc2'))])),
}
# Methods whose attentions hold no BatchNorm: DY-Conv's has no norm, KW's ConvNeXt attentions use
# LayerNorm. Every other backbone must show per-sample norms, or the test lost track of them.
NO_ATTENTION_BATCH_NORM = {'DyConvResNet', 'DyConvMobileNetV2', 'KWConvNeXt', 'DynamicConvNeXt'}
# 64 pixels keep every block's map at 2x2 or more, so that only pooled (attention) inputs give
# one value per sample and channel
INPUT_SHAPE = (4, 3, 64, 64)
pytestmark = pytest.mark.usefixtures('one_thread')


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS.build(copy.deepcopy(BACKBONES[name]))


def batch_norms(model: nn.Module) -> Dict[str, _BatchNorm]:
    return {name: m for name, m in model.named_modules() if isinstance(m, _BatchNorm)}


def per_sample_norms(model: nn.Module) -> List[str]:
    """The BatchNorms that normalise one value per sample and channel in a forward pass: the
    norms of dynamic-conv attentions and gates (``[B, hidden]`` or ``[B, hidden, 1, 1]`` after
    global pooling), found by what they receive rather than by their names."""
    found = []
    hooks = [norm.register_forward_pre_hook(
        lambda module, args, name=name: found.append(name)
        if args[0].numel() // args[0].shape[1] == args[0].shape[0] else None)
        for name, norm in batch_norms(model).items()]
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.randn(INPUT_SHAPE))
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    return sorted(set(found))


def stale_plain_norms(model: nn.Module) -> List[str]:
    """Plain (unsynchronised) BatchNorms that modules hold outside the module tree, e.g. as a
    plain attribute or in a list: the conversion cannot see them, so they would keep
    normalising with per-device statistics."""
    stale = []
    for owner_name, owner in model.named_modules():
        for attr, value in vars(owner).items():
            if attr in ('_modules', '_parameters', '_buffers'):
                continue
            held = value if isinstance(value, (list, tuple)) else (
                list(value.values()) if isinstance(value, dict) else [value])
            stale += [f'{owner_name}.{attr}' for item in held
                      if isinstance(item, _BatchNorm) and not isinstance(item, nn.SyncBatchNorm)]
    return stale


def test_every_mmkw_backbone_is_covered():
    """A new backbone (another dynamic conv method) must be added to BACKBONES, so that SyncBN
    is checked on its attention norms too."""
    registered = {name for name, cls in MODELS.module_dict.items()
                  if cls.__module__.startswith('mmkw.models.backbones')}
    assert 'KWResNet' in registered
    covered = {cfg['type'] for cfg in BACKBONES.values()}
    assert registered - covered == set()


@pytest.mark.parametrize('name', sorted(BACKBONES))
def test_sync_bn_converts_every_norm(name):
    model = build(name)
    before = batch_norms(model)
    attention_norms = per_sample_norms(model)
    if name in NO_ATTENTION_BATCH_NORM:
        assert attention_norms == []
    else:
        assert attention_norms, f'{name}: no attention BatchNorm found'

    synced = convert_sync_batchnorm(copy.deepcopy(model), 'torch')
    after = batch_norms(synced)
    assert set(after) == set(before)
    not_synced = [n for n, m in after.items() if not isinstance(m, nn.SyncBatchNorm)]
    assert not_synced == []
    assert set(attention_norms) <= set(after)
    for norm_name, plain in before.items():
        sync = after[norm_name]
        assert (sync.num_features, sync.eps, sync.momentum, sync.affine) == (
            plain.num_features, plain.eps, plain.momentum, plain.affine), norm_name
    assert stale_plain_norms(synced) == []


@pytest.mark.parametrize('name', sorted(BACKBONES))
def test_sync_bn_state_dict_loads_both_ways(name):
    plain = build(name)
    # give the norms non-default statistics so that a lost buffer shows
    plain.train()
    with torch.no_grad():
        plain(torch.randn(INPUT_SHAPE))
    plain.eval()

    synced = convert_sync_batchnorm(build(name), 'torch')
    synced.load_state_dict(plain.state_dict(), strict=True)
    fresh = build(name)
    fresh.load_state_dict(synced.state_dict(), strict=True)
    synced_state, fresh_state, plain_state = (
        synced.state_dict(), fresh.state_dict(), plain.state_dict())
    assert synced_state.keys() == plain_state.keys()
    for key, value in synced_state.items():
        assert torch.equal(value, fresh_state[key]) and torch.equal(value, plain_state[key]), key

    x = torch.randn(INPUT_SHAPE)
    synced.eval()
    fresh.eval()
    with torch.no_grad():
        want = plain(x)
        for model in (synced, fresh, revert_sync_batchnorm(copy.deepcopy(synced))):
            for got, ref in zip(model(x), want):
                torch.testing.assert_close(got, ref, rtol=0, atol=0)


@pytest.mark.skipif(dist.is_available() and dist.is_initialized(),
                    reason='SyncBatchNorm only falls back to local statistics without a '
                    'process group')
@pytest.mark.parametrize('name', ['KWResNet', 'ODConvMobileNetV2', 'KDNAResNet'])
def test_sync_bn_trains_like_batch_norm_in_one_process(name):
    """Without a process group SyncBatchNorm computes plain batch statistics: same outputs,
    gradients and running statistics as the plain model, the attention norms' [B, hidden]
    inputs included."""
    plain = build(name).train()
    synced = convert_sync_batchnorm(build(name), 'torch').train()
    x = torch.randn(INPUT_SHAPE)
    plain_out = plain(x)
    synced_out = synced(x)
    for got, ref in zip(synced_out, plain_out):
        torch.testing.assert_close(got, ref)
    sum(o.square().sum() for o in plain_out).backward()
    sum(o.square().sum() for o in synced_out).backward()
    synced_params = dict(synced.named_parameters())
    for key, param in plain.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(synced_params[key].grad, param.grad, msg=key)
    synced_state = synced.state_dict()
    for key in per_sample_norms(plain):
        torch.testing.assert_close(synced_state[f'{key}.running_var'],
                                   plain.state_dict()[f'{key}.running_var'])
        assert not torch.equal(plain.state_dict()[f'{key}.running_var'],
                               torch.ones_like(synced_state[f'{key}.running_var']))


@pytest.mark.parametrize('name', ['KWResNet', 'ODConvMobileNetV2', 'KDNAResNet'])
def test_norm_eval_and_frozen_stages_survive_conversion(name):
    """Fine-tuning settings: after the Runner converts, ``train()`` still keeps every norm, the
    attention norms included, in eval mode, and frozen parameters stay frozen."""
    cfg = dict(BACKBONES[name], norm_eval=True, frozen_stages=1)
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen
    synced = convert_sync_batchnorm(model, 'torch')
    synced.train()
    assert [n for n, m in batch_norms(synced).items() if m.training] == []
    assert {n for n, p in synced.named_parameters() if not p.requires_grad} == frozen


@MODEL_WRAPPERS.register_module(force=True)
class HoldingWrapper(nn.Module):
    """A model wrapper that only holds the model: what the Runner hands its wrapper, without
    DDP, which refuses SyncBatchNorm on CPU modules."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def test_runner_sync_bn_switch_converts_attention_norms(tmp_path, monkeypatch):
    """The config switch itself: a distributed Runner (one gloo process) with sync_bn='torch'
    hands its model wrapper a backbone whose norms, the attentions' included, are all
    SyncBatchNorm."""
    if dist.is_initialized():
        pytest.skip('needs to own the process group')
    from mmengine.runner import Runner
    monkeypatch.setenv('LOCAL_RANK', '0')  # what torchrun would set; the Runner reads it
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/store', rank=0,
                            world_size=1)
    try:
        model = dict(type='ImageClassifier', backbone=BACKBONES['KWResNet'],
                     neck=dict(type='GlobalAveragePooling'),
                     head=dict(type='LinearClsHead', num_classes=3, in_channels=128))
        runner = Runner(
            model=model, work_dir=str(tmp_path / 'work'), launcher='pytorch',
            default_scope='mmpretrain', env_cfg=dict(dist_cfg=dict(backend='gloo')),
            cfg=dict(sync_bn='torch', model_wrapper_cfg=dict(type='HoldingWrapper')))
        backbone = runner.model.module.backbone
        norms = batch_norms(backbone)
        assert norms and all(isinstance(m, nn.SyncBatchNorm) for m in norms.values())
        assert per_sample_norms(backbone)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(torch.cuda.is_available(), reason='CPU behaviour of torch')
def test_torch_sync_bn_cannot_run_on_cpu(tmp_path):
    """Why the CPU launcher refuses sync_bn for training (torch 2.14): DDP will not wrap a CPU
    model holding SyncBatchNorm, and with a process group a SyncBatchNorm refuses CPU tensors in
    training. If a torch release lifts this, a CPU 2-process SyncBN run becomes possible."""
    synced = convert_sync_batchnorm(build('KWResNet'), 'torch')
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/store', rank=0,
                            world_size=1)
    try:
        with pytest.raises(ValueError, match='SyncBatchNorm layers only work with GPU modules'):
            nn.parallel.DistributedDataParallel(synced)
        with pytest.raises(ValueError, match='SyncBatchNorm expected input tensor to be on GPU'):
            synced.train()(torch.randn(INPUT_SHAPE))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU glue only acts without GPUs')
def test_cpu_launcher_refuses_sync_bn_for_training_only(monkeypatch):
    cfg = Config(dict(sync_bn='torch'))
    with pytest.raises(ValueError, match=r"sync_bn='torch'.*only on GPUs.*sync_bn=None"):
        setup_distributed(cfg, 'pytorch')
    with pytest.raises(ValueError, match='sync_bn'):
        setup_distributed(cfg, 'slurm')

    # evaluation (tools/test.py) drops it: in eval mode SyncBN computes what BatchNorm does
    if not dist.is_initialized():
        with socket.socket() as sock:
            sock.bind(('127.0.0.1', 0))
            port = sock.getsockname()[1]
        for name, value in dict(RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
                                MASTER_PORT=str(port)).items():
            monkeypatch.setenv(name, value)
        evaluation = Config(dict(sync_bn='torch'))
        try:
            with pytest.warns(UserWarning, match="sync_bn='torch' ignored on the CPU"):
                setup_distributed(evaluation, 'pytorch', training=False)
            assert evaluation.get('sync_bn') is None and dist.get_backend() == 'gloo'
            assert evaluation.model_wrapper_cfg.device_ids is None
        finally:
            dist.destroy_process_group()

    # the suggested override really removes the switch
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    cfg.merge_from_dict(parser.parse_args(['--cfg-options', 'sync_bn=None']).cfg_options)
    assert cfg.get('sync_bn') is None


def test_norm_cfg_sync_bn_leaves_attention_norms_plain():
    """docs/distributed.md: mmdet's ``norm_cfg=dict(type='SyncBN')`` builds the blocks' norms
    only; the attentions build their own BatchNorm1d, so sync_bn='torch' is the switch that
    reaches them."""
    cfg = dict(BACKBONES['KWResNet'], norm_cfg=dict(type='SyncBN', requires_grad=True))
    model = MODELS.build(cfg)
    attention = set(per_sample_norms(model))
    kinds = {name: type(m) for name, m in batch_norms(model).items()}
    assert attention and all(kinds[name] is nn.BatchNorm1d for name in attention)
    assert all(issubclass(kind, nn.SyncBatchNorm)
               for name, kind in kinds.items() if name not in attention)
