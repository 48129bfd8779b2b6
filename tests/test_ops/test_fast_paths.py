"""Every execution path of KWConv2d equals a plain reference: kernels assembled mixture by
mixture, then one F.conv2d per sample. Forward and backward, train and eval, for budgets,
groups, kernel sizes, strides and feature-map sizes that select each path."""
import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmkw.ops import KWConv2d, WarehouseManager, set_temperature
from mmkw.ops import per_sample_conv as psc


def reference_forward(conv: KWConv2d, x: torch.Tensor) -> torch.Tensor:
    alpha = conv.attention(x)  # [B, m, n]
    cells = conv.warehouse_manager.cells(conv.warehouse_index)
    co, ci, ckh, ckw = conv.cell_shape
    spatial, g_out, g_in = conv.mixture_grid
    kh, kw = conv.kernel_size
    cells_per_row = kw // ckw
    weight = x.new_zeros(x.shape[0], *conv.weight_shape)
    for s, o, c in itertools.product(range(spatial), range(g_out), range(g_in)):
        i = (s * g_out + o) * g_in + c
        cell = torch.einsum('bj,jxykl->bxykl', alpha[:, i], cells)
        r, q = (s // cells_per_row) * ckh, (s % cells_per_row) * ckw
        weight[:, o * co:(o + 1) * co, c * ci:(c + 1) * ci, r:r + ckh, q:q + ckw] = cell
    return torch.cat([
        F.conv2d(x[b:b + 1], weight[b], conv.bias, conv.stride, conv.padding, conv.dilation,
                 conv.groups) for b in range(x.shape[0])
    ])


class Pair(nn.Module):

    def __init__(self, in_channels, out_channels, kernel, stride, groups, budget, basis,
                 partition=True, recompute='auto'):
        super().__init__()
        self.warehouse_manager = WarehouseManager(budget, nonlocal_basis_ratio=basis,
                                                  spatial_partition=partition,
                                                  recompute_kernels=recompute)
        self.conv = KWConv2d(in_channels, out_channels, kernel, stride, kernel // 2,
                             groups=groups, bias=True, warehouse_manager=self.warehouse_manager,
                             warehouse_name='w')
        self.other = KWConv2d(out_channels, out_channels, kernel, 1, kernel // 2,
                              groups=groups, warehouse_manager=self.warehouse_manager,
                              warehouse_name='w')
        self.warehouse_manager.build(self)


CASES = [
    # (in, out, kernel, stride, groups, budget, basis, size): sizes pick the paths
    (16, 32, 3, 1, 1, '1x', 1.0, 6),     # mixture conv (36 positions)
    (16, 32, 3, 2, 1, '1/2x', 1.0, 12),  # mixture conv, strided
    (16, 32, 1, 2, 1, '4x', 1.0, 8),     # mixture conv, 1x1 strided
    (16, 32, 3, 1, 1, '2x', 1.0, 12),    # unfold + bmm (144 positions)
    (16, 16, 3, 1, 1, '1/2x', 1 / 16, 16),  # grouped conv over the batch (256 positions)
    (16, 32, 3, 1, 2, '1x', 1.0, 8),     # grouped conv: unfold + bmm
    (16, 16, 3, 1, 16, '1x', 1.0, 8),    # depthwise: always the grouped conv
    (16, 16, 5, 1, 16, '1/2x', 1.0, 16),  # depthwise 5x5: grouped conv
    (16, 32, 1, 1, 1, '1/2x', 1.0, 20),  # 1x1 without unfold (400 positions)
    (16, 32, 3, 1, 1, '1x', 1.0, 2),     # mixed input (4 positions)
    (16, 32, 3, 2, 1, '1/2x', 1.0, 4),   # mixed input, strided, 2x2 channel groups
    (16, 32, 1, 2, 1, '1x', 1.0, 4),     # mixed input, 1x1 strided
    (16, 32, 3, 1, 1, '1x', 1.0, 1),     # mixed input, 1x1 map ('same' padding all round)
]


# 'keep': kernels kept for backward; 'recompute': assembled again in backward, two chunks of
# samples at a time
MEMORY_MODES = ['keep', 'recompute']


@pytest.mark.parametrize('case', CASES, ids=lambda c: '-'.join(map(str, c)))
@pytest.mark.parametrize('mode', ['train', 'eval'])
@pytest.mark.parametrize('memory', MEMORY_MODES)
@pytest.mark.parametrize('kernels', psc.CPU_KERNELS)
def test_fast_path_matches_reference(case, mode, memory, kernels, monkeypatch):
    check_against_reference(case, mode, memory, kernels, monkeypatch)


MIXED_INPUT_CASES = CASES[-4:]


@pytest.mark.parametrize('case', MIXED_INPUT_CASES, ids=lambda c: '-'.join(map(str, c)))
@pytest.mark.parametrize('mode', ['train', 'eval'])
@pytest.mark.parametrize('memory', MEMORY_MODES)
@pytest.mark.parametrize('by_cell', [True, False], ids=['by-cell', 'one-matmul'])
def test_mixed_input_warehouse_products_match_reference(case, mode, memory, by_cell,
                                                        monkeypatch):
    # both ways of applying the warehouse, whatever the rule would pick for these sizes
    monkeypatch.setattr(psc, 'warehouse_by_cell', lambda columns, cell_in: by_cell)
    check_against_reference(case, mode, memory, 'blas', monkeypatch)


def test_warehouse_by_cell_for_few_columns():
    # the cell-ordered warehouse is copied once forward and its gradient once backward, so
    # the sum of partial products pays up to twice as many columns in training
    assert psc.warehouse_by_cell(512, 512) and not psc.warehouse_by_cell(513, 512)
    with torch.no_grad():
        assert psc.warehouse_by_cell(256, 512) and not psc.warehouse_by_cell(257, 512)
    with psc.export_formulation():
        assert not psc.warehouse_by_cell(16, 512)


def check_against_reference(case, mode, memory, kernels, monkeypatch):
    in_ch, out_ch, kernel, stride, groups, budget, basis, size = case
    monkeypatch.setenv('MMKW_CPU_KERNELS', kernels)
    monkeypatch.setenv('MMKW_MATMUL_KERNELS', kernels)
    torch.manual_seed(0)
    if memory == 'recompute':
        kernel_numel = out_ch * in_ch // groups * kernel * kernel
        monkeypatch.setattr(psc, 'KERNEL_CHUNK_NUMEL', 2 * kernel_numel)  # batch 3: 2 chunks
    pair = Pair(in_ch, out_ch, kernel, stride, groups, budget, basis,
                recompute=memory == 'recompute')
    pair.train(mode == 'train')
    set_temperature(pair, 0.3)
    conv = pair.conv
    nn.init.normal_(conv.bias)
    x = torch.randn(3, in_ch, size, size)
    params = [p for p in pair.parameters() if p.requires_grad]

    def run(forward):
        xi = x.clone().requires_grad_()
        out = forward(conv, xi)
        # drawn from its own generator: a forward pass may consume the global one
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        grads = torch.autograd.grad((out * weights).sum(), [xi] + params, allow_unused=True)
        return out, grads

    out, grads = run(lambda c, xi: c(xi))
    ref, ref_grads = run(reference_forward)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    names = ['input'] + [n for n, p in pair.named_parameters() if p.requires_grad]
    for name, g, r in zip(names, grads, ref_grads):
        if r is None:
            assert g is None or torch.count_nonzero(g) == 0, name
            continue
        # 1e-5 relative to the gradient's scale: some sum hundreds of terms of size ~1
        scale = max(1.0, r.abs().max().item())
        torch.testing.assert_close(g, r, atol=1e-5 * scale, rtol=1e-5, msg=f'gradient of {name}')


def paths_and_calls(monkeypatch, kernels):
    monkeypatch.setenv('MMKW_CPU_KERNELS', kernels)
    monkeypatch.setenv('MMKW_MATMUL_KERNELS', kernels)
    paths = []
    calls = []
    monkeypatch.setattr(psc, 'F', _Spy(psc.F, calls))
    monkeypatch.setattr(psc.torch, 'mm', _Spy(psc.torch, calls).mm)
    for case in CASES:
        in_ch, out_ch, kernel, stride, groups, budget, basis, size = case
        pair = Pair(in_ch, out_ch, kernel, stride, groups, budget, basis)
        x = torch.randn(3, in_ch, size, size)
        paths.append(pair.conv.execution_path(x))
        pair.conv(x)
    return paths, calls


def test_cases_cover_every_path(monkeypatch):
    paths, calls = paths_and_calls(monkeypatch, 'blas')
    assert set(paths) == {'mixed_input', 'mixture', 'assembled'}
    # the assembled path itself has an unfold + bmm and a grouped-conv branch; kernels are
    # assembled by a matmul
    assert {'unfold', 'conv2d', 'mm'} <= set(calls)


def test_onednn_kernels_use_convolutions(monkeypatch):
    # where oneDNN is the faster library, kxk per-sample convs never unfold for a bmm (the
    # mixed-input path still does) and kernels are assembled by a 1x1 convolution
    paths, calls = paths_and_calls(monkeypatch, 'onednn')
    assert set(paths) == {'mixed_input', 'assembled'}
    assert calls.count('unfold') == sum(1 for case, path in zip(CASES, paths)
                                        if path == 'mixed_input' and case[2] > 1)
    assert 'conv2d' in calls
    for variable in ('MMKW_CPU_KERNELS', 'MMKW_MATMUL_KERNELS'):
        monkeypatch.setenv(variable, 'fast')
        with pytest.raises(ValueError, match=f"{variable} must be 'auto' or one of"):
            Pair(16, 32, 3, 1, 1, '1x', 1.0).conv(torch.randn(2, 16, 8, 8))
        monkeypatch.setenv(variable, 'onednn')


def saved_bytes(module, x):
    """Bytes autograd keeps for the backward pass of ``module(x)``."""
    total = []

    def pack(tensor):
        total.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return sum(total)


@pytest.mark.parametrize('kernels', psc.CPU_KERNELS)
def test_recomputing_kernels_keeps_no_kernels(kernels, monkeypatch):
    monkeypatch.setenv('MMKW_CPU_KERNELS', kernels)
    monkeypatch.setenv('MMKW_MATMUL_KERNELS', kernels)
    # 3x3 convs on 14x14 (BLAS) or 28x28 (oneDNN) maps with 4x warehouses assemble kernels
    # (small warehouses mix the input instead); batch 8 holds
    # 8 x 64 x 64 x 9 = 295k numbers
    size = 14 if kernels == 'blas' else 28
    x = torch.randn(8, 64, size, size, requires_grad=True)
    assert Pair(64, 64, 3, 1, 1, '4x', 1.0).conv.execution_path(x) == 'assembled'
    kernel_bytes = 8 * 64 * 64 * 9 * 4
    kept = saved_bytes(Pair(64, 64, 3, 1, 1, '4x', 1.0, recompute=False).conv, x)
    recomputed = saved_bytes(Pair(64, 64, 3, 1, 1, '4x', 1.0, recompute=True).conv, x)
    assert kept > kernel_bytes
    assert recomputed < kept - kernel_bytes
    # 'auto' keeps kernels up to RECOMPUTE_MIN_NUMEL; above it, those that would cost more
    # than RECOMPUTE_MAX_SHARE to assemble again, up to RECOMPUTE_MAX_NUMEL
    auto = Pair(64, 64, 3, 1, 1, '4x', 1.0, recompute='auto').conv
    assert saved_bytes(auto, x) == kept
    share = auto.recompute_share(x, 'assembled')
    cells = auto.attention.num_cells
    assert share == pytest.approx(cells / (3 * (cells + size * size)))
    monkeypatch.setattr(psc, 'RECOMPUTE_MIN_NUMEL', 8 * 64 * 64 * 9 - 1)
    monkeypatch.setattr(psc, 'RECOMPUTE_MAX_SHARE', share * 1.01)
    assert saved_bytes(auto, x) == recomputed
    monkeypatch.setattr(psc, 'RECOMPUTE_MAX_SHARE', share * 0.99)
    assert saved_bytes(auto, x) == kept
    monkeypatch.setattr(psc, 'RECOMPUTE_MAX_NUMEL', 8 * 64 * 64 * 9 - 1)
    assert saved_bytes(auto, x) == recomputed
    with pytest.raises(ValueError, match='recompute_kernels'):
        WarehouseManager('1x', recompute_kernels='sometimes')


def test_auto_recompute_rule():
    # a KW 4x ResNet-18's stage-4 conv: 108 cells per kernel number, 49 output positions
    assert psc.recompute_share(108, 49) == pytest.approx(108 / 471)
    assert psc.recompute_share(1, 0) == pytest.approx(1 / 3)
    low, high = psc.RECOMPUTE_MIN_NUMEL, psc.RECOMPUTE_MAX_NUMEL
    assert not psc.auto_recomputes(low, 0.0)
    assert psc.auto_recomputes(low + 1, psc.RECOMPUTE_MAX_SHARE)
    assert not psc.auto_recomputes(low + 1, 0.3)
    assert not psc.auto_recomputes(high, 0.3)
    assert psc.auto_recomputes(high + 1, 0.3)


def test_batch_chunks():
    assert psc.batch_chunks(8, 100, max_numel=800) == [(0, 8)]
    assert psc.batch_chunks(32, 100, max_numel=1100) == [(0, 11), (11, 22), (22, 32)]
    assert psc.batch_chunks(2, 10**6, max_numel=10) == [(0, 1), (1, 2)]


def test_path_choice_follows_the_cost_model(monkeypatch):
    # AVX512_CPU starts pinned to True (tests/conftest.py)
    # KW ResNet-18 1x stage 4 (n=27, 512x512 cells, 3x3): 2x2 maps (a 16x16 digits input)
    # mix the input; 14x14 maps assemble kernels; 7x7 maps are near the break-even point.
    grid, cell = (9, 1, 1), (512, 512, 1, 1)
    assert psc.choose_path(16, 4, 27, grid, cell, 1) == 'mixed_input'
    assert psc.choose_path(16, 196, 27, grid, cell, 1) == 'assembled'
    # KW stage 2 at 8x8 (n=47, 128x128 cells): assembly is 3x cheaper
    assert psc.choose_path(16, 64, 47, grid, (128, 128, 1, 1), 1) == 'mixture'
    # ... unless oneDNN runs the per-sample conv, which takes kernels in conv layout
    assert psc.choose_path(16, 64, 47, grid, (128, 128, 1, 1), 1, onednn=True) == 'assembled'
    assert psc.choose_path(16, 4, 27, grid, cell, 1, onednn=True) == 'mixed_input'
    # oneDNN's faster warehouse matmul moves the break-even point: 7x7 maps mix the input...
    assert psc.choose_path(16, 49, 27, grid, cell, 1) == 'mixture'
    assert psc.choose_path(16, 49, 27, grid, cell, 1, onednn=True) == 'mixed_input'
    # ... in inference with AVX-512 only: with AVX2 the matmul has half the multiply-adds per
    # cycle; training mixes there too (the kernels would cost memory)
    monkeypatch.setattr(psc, 'AVX512_CPU', False)
    assert psc.choose_path(16, 49, 27, grid, cell, 1, onednn=True) == 'mixed_input'
    with torch.no_grad():
        assert psc.choose_path(16, 49, 27, grid, cell, 1, onednn=True) == 'assembled'
        assert psc.choose_path(16, 4, 27, grid, cell, 1, onednn=True) == 'mixed_input'
        # the shapes demo's KW Mask R-CNN: stage 4's 5x5 maps at batch 2 (cost ratio 1.47) mix
        assert psc.choose_path(2, 25, 27, grid, cell, 1, onednn=True) == 'mixed_input'
    monkeypatch.setattr(psc, 'AVX512_CPU', True)
    assert psc.choose_path(16, 196, 47, grid, (256, 256, 1, 1), 1, onednn=True) == 'assembled'
    # one sample's kernel is as cheap as its mixed input, and runs as a plain conv
    assert psc.choose_path(1, 49, 27, grid, cell, 1, onednn=True) == 'assembled'
    assert psc.choose_path(1, 4, 27, grid, cell, 1) == 'mixture'
    assert psc.choose_path(2, 4, 27, grid, cell, 1) == 'mixed_input'
    with psc.export_formulation():
        assert psc.choose_path(1, 4, 27, grid, cell, 1) == 'mixed_input'
    # KW ConvNeXt-T's 4x4 stem (16 cells of 96x3) at 56x56 and last 2x2 downsampling conv (4
    # cells of 768x384) at 7x7: about as many multiply-adds either way, but the stem's output
    # outweighs its kernel, so it assembles
    assert psc.choose_path(8, 3136, 16, (16, 1, 1), (96, 3, 1, 1), 1, onednn=True) == 'assembled'
    assert psc.choose_path(8, 49, 4, (4, 1, 1), (768, 384, 1, 1), 1, onednn=True) == 'mixed_input'
    # grouped convs and whole-kernel cells always assemble
    assert psc.choose_path(16, 4, 27, grid, cell, 2) == 'assembled'
    assert psc.choose_path(16, 4, 27, (1, 1, 1), (512, 512, 3, 3), 1) == 'assembled'


@pytest.mark.parametrize('kernels', psc.CPU_KERNELS)
def test_matmul2d(kernels, monkeypatch):
    # the matmul library is a choice of its own, whatever runs the per-sample convs
    other = next(k for k in psc.CPU_KERNELS if k != kernels)
    monkeypatch.setenv('MMKW_CPU_KERNELS', other)
    monkeypatch.setenv('MMKW_MATMUL_KERNELS', kernels)
    calls = []
    monkeypatch.setattr(psc, 'F', _Spy(psc.F, calls))
    # a 1x1 conv from ONEDNN_MATMUL_MIN_ROWS rows and ONEDNN_MATMUL_MIN_COLUMNS columns on
    for rows, columns in ((8, 300), (64, 300), (64, 16)):
        a = torch.randn(rows, 27, requires_grad=True)
        b = torch.randn(27, columns)
        torch.testing.assert_close(psc.matmul2d(a, b), a @ b, atol=1e-5, rtol=1e-5)
    assert calls == (['conv2d'] if kernels == 'onednn' else [])


def test_release_formulation_assembles_and_keeps_kernels(monkeypatch):
    # the paper's FLOP count and the benchmark's baseline formulation: Eq. 3, then one
    # grouped conv over the batch, whatever the map size; exact like every path
    monkeypatch.setenv('MMKW_CPU_KERNELS', 'onednn')
    monkeypatch.setenv('MMKW_MATMUL_KERNELS', 'onednn')
    pair = Pair(16, 32, 3, 1, 1, '1x', 1.0, recompute=True)
    conv = pair.conv
    x = torch.randn(2, 16, 2, 2)
    assert conv.execution_path(x) == 'mixed_input'
    calls = []
    monkeypatch.setattr(psc, 'F', _Spy(psc.F, calls))
    with psc.release_formulation():
        assert conv.execution_path(x) == 'assembled'
        # recompute_kernels=True does not apply: the kernels are kept
        assert saved_bytes(conv, x) >= 2 * 32 * 16 * 9 * 4
        out = conv(x)
    assert calls.count('conv2d') == 2 and 'unfold' not in calls
    assert conv.execution_path(x) == 'mixed_input'
    torch.testing.assert_close(out, reference_forward(conv, x), atol=1e-5, rtol=1e-5)
    conv1x1 = Pair(16, 32, 1, 1, 1, '1x', 1.0).conv
    with psc.release_formulation():
        torch.testing.assert_close(conv1x1(x), reference_forward(conv1x1, x), atol=1e-5,
                                   rtol=1e-5)


def test_whole_kernel_cells_without_partition():
    torch.manual_seed(0)
    pair = Pair(16, 32, 3, 1, 1, '1x', 1.0, partition=False).eval()
    assert pair.conv.cell_shape == (32, 16, 3, 3)
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(pair.conv(x), reference_forward(pair.conv, x), atol=1e-5,
                               rtol=1e-5)


class _Spy:

    def __init__(self, module, calls):
        self._module = module
        self._calls = calls

    def __getattr__(self, name):
        attr = getattr(self._module, name)
        if callable(attr):

            def wrapper(*args, **kwargs):
                self._calls.append(name)
                return attr(*args, **kwargs)

            return wrapper
        return attr


@pytest.mark.parametrize('kernel, padding, dilation, stride, groups, size, shortcut', [
    (3, 1, 1, 1, 1, 1, True),    # a 'same' 3x3 conv on a 1x1 map meets only the centre tap
    (3, 2, 2, 1, 1, 1, True),    # dilated
    (5, 2, 1, 2, 1, 1, True),    # strided: still one output pixel
    ((3, 1), (1, 0), 1, 1, 1, 1, True),
    (3, 1, 1, 1, 2, 1, False),   # grouped
    (3, 0, 1, 1, 1, 3, False),   # a 3x3 map
    (3, 1, 1, 1, 1, 2, False),   # a 2x2 map meets four taps
    (2, 1, 1, 1, 1, 1, False),   # an even kernel has no centre tap
    (2, 1, 2, 1, 1, 1, False),   # nor when dilated to 'same' padding: every tap meets padding
])
@pytest.mark.parametrize('bias', [True, False])
def test_single_pixel_aware_conv2d(kernel, padding, dilation, stride, groups, size, shortcut,
                                   bias, monkeypatch):
    kh, kw = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    ph, pw = padding if isinstance(padding, tuple) else (padding, padding)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, size, size, generator=generator, requires_grad=True)
    weight = torch.randn(8, 6 // groups, kh, kw, generator=generator, requires_grad=True)
    b = torch.randn(8, generator=generator, requires_grad=True) if bias else None
    args = ((stride, stride), (ph, pw), (dilation, dilation), groups)
    expected = F.conv2d(x, weight, b, *args)
    calls = []
    monkeypatch.setattr(psc, 'F', _Spy(psc.F, calls))
    out = psc.single_pixel_aware_conv2d(x, weight, b, *args)
    assert ('conv2d' not in calls) == shortcut
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    inputs = [x, weight] + ([b] if bias else [])
    grads = torch.autograd.grad(out.sum(), inputs)
    expected_grads = torch.autograd.grad(expected.sum(), inputs)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-5)
