"""The contract of every dynamic conv of mmkw (:class:`mmkw.ops.DynamicConv2d`), checked for each
registered method alike: build, forward and backward, every execution path equal to the
per-sample reference (outputs, input and parameter gradients; train and eval; kernels kept or
recomputed in chunks; BLAS and oneDNN CPU kernels), empty batches, state-dict round trips, the
temperature, and torch.compile without graph breaks.

A new method adds its cases to ``CASES``; ``test_every_registered_method_has_cases`` fails until
it does.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, Tuple

import pytest
import torch
import torch.nn as nn
from mmengine.registry import MODELS

from mmkw.ops import (DyConv2d, DynamicConv2d, KWConv2d, ODConv2d, WarehouseManager,
                      get_temperature, set_temperature)
from mmkw.ops import per_sample_conv as psc


class KWOwner(nn.Module):
    """A KW conv and a second conv sharing its warehouse (KW convs need an owner that builds
    the warehouse, as a backbone does)."""

    def __init__(self, in_channels, out_channels, kernel, stride=1, groups=1, budget='1x',
                 recompute_kernels='auto', bias=True, extra_heads=False):
        super().__init__()
        self.warehouse_manager = WarehouseManager(budget, recompute_kernels=recompute_kernels,
                                                  attention_extra_heads=extra_heads)
        self.conv = KWConv2d(in_channels, out_channels, kernel, stride, kernel // 2,
                             groups=groups, bias=bias, warehouse_manager=self.warehouse_manager,
                             warehouse_name='w')
        self.other = KWConv2d(out_channels, out_channels, kernel, 1, kernel // 2, groups=groups,
                              warehouse_manager=self.warehouse_manager, warehouse_name='w')
        self.warehouse_manager.build(self)


class Owner(nn.Module):
    """Holds a self-contained dynamic conv under the same name as :class:`KWOwner`."""

    def __init__(self, conv: DynamicConv2d) -> None:
        super().__init__()
        self.conv = conv


@dataclass(frozen=True)
class Case:
    """A conv to test: ``build(recompute_kernels)`` returns its owner; ``size``: the input map
    (which, with the CPU kernels, picks the per-sample conv's branch)."""
    name: str
    build: Callable[[object], nn.Module]
    in_channels: int
    size: int
    temperature: float  # a non-final temperature inside the method's range
    # False: no output check (CAF over kernels only moves its epsilon with T)
    temperature_changes_output: bool = True
    paths: Tuple[str, ...] = field(default=('assembled', ))


def od(in_ch, out_ch, k, stride=1, groups=1, **kwargs):
    return lambda recompute: Owner(ODConv2d(in_ch, out_ch, k, stride, k // 2, groups=groups,
                                            bias=True, recompute_kernels=recompute, **kwargs))


def dy(in_ch, out_ch, k, stride=1, groups=1, **kwargs):
    return lambda recompute: Owner(DyConv2d(in_ch, out_ch, k, stride, k // 2, groups=groups,
                                            bias=True, recompute_kernels=recompute, **kwargs))


def kw(in_ch, out_ch, k, stride=1, groups=1, budget='1x', extra_heads=False):
    return lambda recompute: KWOwner(in_ch, out_ch, k, stride, groups, budget, recompute,
                                     extra_heads=extra_heads)


CASES = [
    Case('kw-3x3', kw(16, 32, 3), 16, 6, 0.5, paths=('mixture', 'mixed_input', 'assembled')),
    Case('kw-dw-1/2x', kw(16, 16, 3, groups=16, budget='1/2x'), 16, 16, 0.5),
    # KW* (Table 17): KW with input-channel, output-channel and kernel-position heads
    Case('kwstar-3x3', kw(16, 32, 3, extra_heads=True), 16, 6, 0.5),
    Case('kwstar-dw-strided', kw(16, 16, 3, stride=2, groups=16, extra_heads=True), 16, 9, 0.5),
    Case('od-k4-3x3', od(16, 32, 3, kernel_num=4), 16, 6, 5.0),
    Case('od-k4-3x3-large-map', od(16, 32, 3, kernel_num=4), 16, 16, 5.0),
    Case('od-k4-1x1', od(16, 32, 1, kernel_num=4), 16, 6, 5.0),
    Case('od-k4-dw', od(32, 32, 3, groups=32, kernel_num=4), 32, 6, 5.0),
    Case('od-k4-strided-grouped', od(16, 32, 3, stride=2, groups=4, kernel_num=4), 16, 9, 5.0),
    Case('od-k4-1x1-strided-caf', od(16, 32, 1, stride=2, kernel_num=4,
                                     attention_function='caf'), 16, 8, 5.0),
    Case('od-k1-3x3', od(16, 32, 3, kernel_num=1), 16, 6, 5.0),
    Case('od-k1-1x1', od(16, 32, 1, kernel_num=1), 16, 6, 5.0, paths=('plain', )),
    Case('od-k1-1x1-strided', od(16, 32, 1, stride=2, kernel_num=1), 16, 7, 5.0,
         paths=('plain', )),
    Case('od-k1-dw-strided', od(32, 32, 3, stride=2, groups=32, kernel_num=1), 32, 8, 5.0),
    Case('dy-3x3', dy(16, 32, 3), 16, 6, 5.0),
    Case('dy-3x3-large-map', dy(16, 32, 3, stride=2), 16, 32, 5.0),
    Case('dy-1x1-strided', dy(16, 32, 1, stride=2), 16, 8, 5.0),
    Case('dy-dw', dy(32, 32, 3, groups=32), 32, 6, 5.0),
    # CAF is invariant to the temperature but for its epsilon (see kernel_mixture_attention)
    Case('dy-grouped-caf', dy(16, 32, 3, groups=2, attention_function='caf'), 16, 6, 5.0,
         temperature_changes_output=False),
]
IDS = [case.name for case in CASES]

# small maps: OpenMP synchronisation costs more than a second thread gains
pytestmark = pytest.mark.usefixtures('one_thread')


def build(case: Case, recompute='auto', seed=0) -> nn.Module:
    torch.manual_seed(seed)
    owner = case.build(recompute)
    conv = owner.conv
    # off their init: a nonzero bias and attention logits, non-trivial BN statistics
    for name, param in owner.named_parameters():
        if name.endswith('bias'):
            with torch.no_grad():
                param.normal_(0, 0.5)
    for module in owner.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2)
    assert isinstance(conv, DynamicConv2d)
    return owner


def test_every_registered_method_has_cases():
    registered = {cls for cls in MODELS.module_dict.values()
                  if isinstance(cls, type) and issubclass(cls, DynamicConv2d)}
    covered = set()
    for case in CASES:
        covered.add(type(build(case).conv))
    assert registered == covered, 'add cases to CASES for every registered dynamic conv'


def test_cases_cover_every_execution_path():
    taken = set()
    for kernels in psc.CPU_KERNELS:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv('MMKW_CPU_KERNELS', kernels)
            patch.setenv('MMKW_MATMUL_KERNELS', kernels)
            for case in CASES:
                conv = build(case).conv
                path = conv.execution_path(torch.randn(3, case.in_channels, case.size,
                                                       case.size))
                assert path in case.paths, (case.name, kernels, path)
                taken.add((type(conv).__name__, path))
    assert taken == {('KWConv2d', 'mixture'), ('KWConv2d', 'mixed_input'),
                     ('KWConv2d', 'assembled'), ('ODConv2d', 'plain'),
                     ('ODConv2d', 'assembled'), ('DyConv2d', 'assembled')}


def grads_of(owner: nn.Module, forward, x: torch.Tensor):
    """Output and the gradients of a weighted sum of it (input first, then parameters)."""
    xi = x.clone().requires_grad_()
    out = forward(xi)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    params = [p for p in owner.parameters() if p.requires_grad]
    grads = torch.autograd.grad((out * weights).sum(), [xi] + params, allow_unused=True)
    return out, grads


@pytest.mark.parametrize('case', CASES, ids=IDS)
@pytest.mark.parametrize('mode', ['train', 'eval'])
@pytest.mark.parametrize('memory', ['keep', 'recompute'])
@pytest.mark.parametrize('kernels', psc.CPU_KERNELS)
def test_forward_equals_the_per_sample_reference(case, mode, memory, kernels, monkeypatch):
    monkeypatch.setenv('MMKW_CPU_KERNELS', kernels)
    monkeypatch.setenv('MMKW_MATMUL_KERNELS', kernels)
    owner = build(case, recompute=memory == 'recompute')
    conv = owner.conv
    if memory == 'recompute':
        # batch 3 in two chunks of samples, each assembled again in backward
        per_sample = conv.out_channels * conv.in_channels // conv.groups * \
            conv.kernel_size[0] * conv.kernel_size[1]
        monkeypatch.setattr(psc, 'KERNEL_CHUNK_NUMEL', 2 * per_sample)
    owner.train(mode == 'train')
    set_temperature(owner, case.temperature)
    x = torch.randn(3, case.in_channels, case.size, case.size)
    out, grads = grads_of(owner, conv, x)
    ref, ref_grads = grads_of(owner, conv.reference_forward, x)
    assert out.shape == (3, conv.out_channels, *conv.output_size(case.size, case.size))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    names = ['input'] + [n for n, p in owner.named_parameters() if p.requires_grad]
    for name, grad, ref_grad in zip(names, grads, ref_grads):
        if ref_grad is None:
            assert grad is None or torch.count_nonzero(grad) == 0, name
            continue
        assert grad is not None and torch.isfinite(grad).all(), name
        scale = max(1.0, ref_grad.abs().max().item())
        torch.testing.assert_close(grad, ref_grad, atol=1e-5 * scale, rtol=1e-5,
                                   msg=f'gradient of {name}')
    if mode == 'train':
        # every parameter of the conv learns (the second KW conv of the owner is unused)
        for name, grad in zip(names[1:], grads[1:]):
            if name.startswith('conv.'):
                assert grad is not None and torch.count_nonzero(grad) > 0, name


@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_empty_batch(case):
    owner = build(case)
    conv = owner.conv
    out_size = conv.output_size(case.size, case.size)
    for mode in (True, False):
        owner.train(mode)
        x = torch.randn(0, case.in_channels, case.size, case.size, requires_grad=True)
        out = conv(x)
        assert out.shape == (0, conv.out_channels, *out_size)
        out.sum().backward()
        assert x.grad.shape == x.shape


@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_state_dict_round_trip(case):
    owner = build(case, seed=0).eval()
    other = build(case, seed=1).eval()
    x = torch.randn(2, case.in_channels, case.size, case.size)
    with torch.no_grad():
        assert not torch.allclose(owner.conv(x), other.conv(x))
        other.load_state_dict(owner.state_dict(), strict=True)
        torch.testing.assert_close(other.conv(x), owner.conv(x), atol=0, rtol=0)
    # the temperature is a setting of the run, not part of the checkpoint
    assert not any('temperature' in key for key in owner.state_dict())


@pytest.mark.parametrize('case', CASES, ids=IDS)
def test_temperature_set_and_get(case):
    owner = build(case).eval()
    attention = owner.conv.attention
    final = attention.final_temperature
    assert get_temperature(owner) == final
    x = torch.randn(2, case.in_channels, case.size, case.size)
    with torch.no_grad():
        at_final = owner.conv(x)
        assert set_temperature(owner, case.temperature) >= 1
        assert get_temperature(owner) == case.temperature == attention.temperature
        if case.temperature_changes_output:
            assert not torch.allclose(owner.conv(x), at_final, atol=1e-4, rtol=1e-3)
        set_temperature(owner, final)
        torch.testing.assert_close(owner.conv(x), at_final, atol=0, rtol=0)
    low, high = attention.temperature_range
    with pytest.raises(ValueError, match='temperature must be in'):
        set_temperature(owner, low - 1)
    assert get_temperature(owner) == final


# torch.compile is slow to trace: one case per method and path
COMPILE_CASES = ['kw-3x3', 'od-k4-3x3', 'od-k1-1x1', 'dy-3x3']


@pytest.mark.parametrize('name', COMPILE_CASES)
def test_compiles_without_graph_breaks(name):
    case = CASES[IDS.index(name)]
    torch._dynamo.reset()
    owner = build(case).eval()
    conv = owner.conv
    set_temperature(owner, case.temperature)

    def forward(x):  # a second map size takes another path where the method has one
        return conv(x), conv(x[:, :, :2, :2])

    with torch.no_grad():
        explanation = torch._dynamo.explain(forward)(
            torch.randn(2, case.in_channels, case.size, case.size))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


_METHOD_KEYS: Dict[type, Tuple[str, ...]] = {
    ODConv2d: ('weight', 'attention.fc.weight', 'attention.bn.weight',
               'attention.channel_fc.weight'),
    DyConv2d: ('weight', 'attention.fc1.weight', 'attention.fc1.bias', 'attention.fc2.weight',
               'attention.fc2.bias'),
}


@pytest.mark.parametrize('layer', [ODConv2d, DyConv2d])
def test_weight_holds_k_kernels(layer):
    conv = layer(16, 32, 3, groups=2, kernel_num=3)
    assert conv.weight.shape == (3, 32, 8, 3, 3)
    keys = set(conv.state_dict())
    assert set(_METHOD_KEYS[layer]) <= keys
    assert 'bias' not in keys
