"""KernelDNA child convs: the official block fixtures (eval, train, every gradient), the math of
one child, the parent link through state_dict / deepcopy / DDP / torch.compile, deploy folding
and the one-sample error."""
import copy
import json
import socket

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import mmkw  # noqa: F401  (registers the modules)
from mmkw.converters.kdna_official import rename_stage_state_dict
from mmkw.models.backbones.kdna_mobilenet_v2 import kdna_inverted_residual_stage
from mmkw.models.backbones.kdna_resnet import kdna_basic_stage, kdna_bottleneck_stage
from mmkw.ops.kerneldna import (KDNAChildConv2d, KDNAStaticTerms, fold_static_kernels,
                                unfold_static_kernels)

from conftest import SHARED

FIXTURES = SHARED / 'fixtures' / 'official_kdna'
CASES = ['kdna_r18_newlayer', 'kdna_r50_newlayer3', 'kdna_r50_newlayer4',
         'kdna_mv2_sharecluster', 'kdna_mv2_sharecluster_s1']


def build_official_case(meta: dict):
    """The mmkw stage of an official block class of the fixtures, and its layout and children."""
    cls = meta['cls'].split('.')[-1]
    if cls == 'NewLayer':
        return 'basic', meta['n_kids'], kdna_basic_stage(
            meta['inplanes'], meta['planes'], meta['stride'], meta['n_kids'])
    if cls in ('NewLayer3', 'NewLayer4'):
        # the release's entry block takes 2 * dim channels and gives 4 * dim, stride 2
        n_kids = meta['n'] if cls == 'NewLayer3' else meta['n_kids']
        layout = 'pairs' if cls == 'NewLayer3' else 'shared'
        return layout, n_kids, kdna_bottleneck_stage(2 * meta['dim'], 4 * meta['dim'], 2, n_kids,
                                                     layout)
    assert cls == 'ShareCluster', cls
    return 'cluster', meta['n_kids'], kdna_inverted_residual_stage(
        meta['inp'], meta['oup'], meta['stride'], meta['n_kids'], meta['expand_ratio'])


@pytest.mark.parametrize('case', CASES)
def test_official_fixtures_eval_train_and_gradients(case):
    if not FIXTURES.is_dir():
        pytest.skip(f'the shared KernelDNA fixtures are absent ({FIXTURES}); they come with the '
                    "project's ../shared folder")
    meta = json.loads((FIXTURES / f'{case}.json').read_text())
    data = torch.load(FIXTURES / f'{case}.pt', weights_only=True)
    layout, n_kids, stage = build_official_case(meta)
    renamed = rename_stage_state_dict(layout, data['state_dict'], n_kids)
    stage.load_state_dict(renamed, strict=True)  # key renaming only
    x = data['input']
    assert list(x.shape) == meta['input_shape']

    stage.eval()
    with torch.no_grad():
        out_eval = stage(x)
    torch.testing.assert_close(out_eval, data['out_eval'], atol=1e-5, rtol=1e-5)

    stage.train()
    out_train = stage(x)
    assert list(out_train.shape) == meta['output_shape']
    torch.testing.assert_close(out_train, data['out_train'], atol=1e-5, rtol=1e-5)
    (out_train ** 2).mean().backward()
    ours = dict(stage.named_parameters())
    official_to_ours = dict(zip(data['state_dict'], renamed))
    assert len(data['grads']) == len(ours)  # every parameter has a reference gradient
    for key, grad in data['grads'].items():
        torch.testing.assert_close(ours[official_to_ours[key]].grad, grad, atol=1e-5, rtol=1e-5,
                                   msg=lambda m: f'{case}: gradient of {key}: {m}')


def test_child_starts_as_its_gated_parent_and_follows_the_static_terms():
    torch.manual_seed(0)
    parent = nn.Conv2d(6, 8, 3, padding=1, bias=False)
    child = KDNAChildConv2d(6, 8, 3, padding=1, parent=parent).eval()
    x = torch.randn(2, 6, 5, 5)
    with torch.no_grad():
        gate = child.gate(x)
        assert gate.shape == (2, 6, 1, 1)
        torch.testing.assert_close(child(x), parent(x * gate))
        f, s = torch.randn(8, 1, 1, 1), torch.randn(1, 1, 3, 3)
        child.static_terms.static_filter_attn.copy_(f[None])
        child.static_terms.static_spatial_attn.copy_(s[None])
        expected = F.conv2d(x * gate, parent.weight * (1 + f) * (1 + s), padding=1)
        torch.testing.assert_close(child(x), expected)
    # the parent learns from its children
    child.train()
    child(x).sum().backward()
    assert parent.weight.grad is not None and parent.weight.grad.abs().sum() > 0


def test_child_builds_through_mmcv_and_checks_its_parent():
    from mmcv.cnn import build_conv_layer
    parent = nn.Conv2d(4, 4, 3, padding=1, bias=True)
    child = build_conv_layer(dict(type='KDNAChildConv2d', parent=parent), 4, 4, 3, padding=1,
                             bias=True)
    assert isinstance(child, KDNAChildConv2d)
    torch.testing.assert_close(child.bias, parent.bias)  # its own bias, starting as the parent's
    assert child.bias is not parent.bias
    linear = nn.Linear(4, 12)  # a linear layer is a 1x1 conv parent
    assert KDNAChildConv2d(4, 12, 1, parent=linear).derived_kernel().shape == (12, 4, 1, 1)
    with pytest.raises(ValueError, match=r'parent kernel has shape \[4, 4, 3, 3\].*\[8, 4, 3, 3\]'):
        KDNAChildConv2d(4, 8, 3, padding=1, parent=parent)
    with pytest.raises(TypeError, match='nn.Conv2d'):
        KDNAChildConv2d(4, 4, 3, parent=nn.BatchNorm2d(4))
    terms = KDNAStaticTerms(2, 4, 3)
    with pytest.raises(ValueError, match='index 2 is outside the static terms of 2 children'):
        KDNAChildConv2d(4, 4, 3, padding=1, parent=parent, static_terms=terms, index=2)


def _stage_and_input():
    torch.manual_seed(1)
    stage = kdna_basic_stage(8, 16, 2, 3)
    with torch.no_grad():
        stage.statics.static_filter_attn.normal_(0, 0.2)
        stage.statics.static_spatial_attn.normal_(0, 0.2)
    return stage, torch.randn(2, 8, 12, 12)


def test_parent_link_survives_state_dict_and_load_state_dict():
    stage, x = _stage_and_input()
    keys = list(stage.state_dict())
    # each tensor once, under its owner: the parents' weights, the stage's static terms
    assert '1.conv2.weight' in keys and 'statics.static_filter_attn' in keys
    assert not [k for k in keys if k.startswith('0.conv2.') and not k.startswith('0.conv2.gate.')]
    other = kdna_basic_stage(8, 16, 2, 3).eval()
    stage.eval()
    for assign in (False, True):
        other.load_state_dict(copy.deepcopy(stage.state_dict()), assign=assign)
        with torch.no_grad():
            torch.testing.assert_close(other(x), stage(x))
        # the children read the parent that now holds the weights
        assert other[0].conv2.parent is other[1].conv2
        torch.testing.assert_close(other[0].conv2.derived_kernel(),
                                   stage[0].conv2.derived_kernel())


def test_parent_link_survives_deepcopy():
    stage, x = _stage_and_input()
    stage.eval()
    clone = copy.deepcopy(stage)
    assert clone[0].conv2.parent is clone[1].conv2 and clone[2].conv1.parent is clone[2].conv2
    assert clone[0].conv2.static_terms is clone.statics
    assert clone[0].conv2.parent is not stage[1].conv2
    with torch.no_grad():
        clone[1].conv2.weight.mul_(2)  # the copy's children follow the copy's parent only
        assert torch.equal(clone[0].conv2.derived_kernel(), 2 * stage[0].conv2.derived_kernel())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_parent_link_under_ddp():
    import torch.distributed as dist
    stage, x = _stage_and_input()
    reference = copy.deepcopy(stage)
    reference(x).square().mean().backward()
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{_free_port()}', rank=0,
                            world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(stage)
        ddp(x).square().mean().backward()
    finally:
        dist.destroy_process_group()
    for (name, ours), theirs in zip(stage.named_parameters(), reference.parameters()):
        torch.testing.assert_close(ours.grad, theirs.grad, msg=lambda m: f'{name}: {m}')


@pytest.mark.parametrize('training', [False, True])
def test_compiles_without_graph_breaks(training):
    stage, x = _stage_and_input()
    stage.train(training)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(stage)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_deploy_folding_matches_and_refuses_training():
    stage, x = _stage_and_input()
    stage.eval()
    with torch.no_grad():
        expected = stage(x)
        assert fold_static_kernels(stage) == 3
        torch.testing.assert_close(stage(x), expected, atol=1e-5, rtol=0)
    assert stage[0].conv2.folded and 'folded_weight' not in ''.join(stage.state_dict())
    stage.train()
    with pytest.raises(RuntimeError, match='unfold'):
        stage(x)
    assert unfold_static_kernels(stage) == 3
    stage(x).sum().backward()
    assert stage.statics.static_filter_attn.grad is not None


def test_one_sample_in_training_names_the_gate_and_the_way_out():
    stage, x = _stage_and_input()
    stage.train()
    with pytest.raises(ValueError, match=r'KernelDNA SE gate.*one sample.*norm_eval=True'):
        stage(x[:1])
    stage.eval()
    stage(x[:1])  # running statistics: one sample is fine
    # a gate norm that works on one sample
    gn = kdna_basic_stage(8, 16, 2, 3, gate_norm_cfg=dict(type='GN', num_groups=1)).train()
    assert gn(x[:1]).shape == (1, 16, 6, 6)


def test_static_terms_of_another_layout_are_refused():
    stage = kdna_basic_stage(8, 16, 2, 3)
    state = kdna_basic_stage(8, 16, 2, 4).state_dict()
    with pytest.raises(ValueError, match=r"static terms 'statics'.*\[4, 16, 1, 1, 1\].*3 children"):
        stage.load_state_dict(state, strict=False)
