"""Convolution of every sample with its own kernel, the second half of a KW conv.

Exact formulations, chosen by shape (timings on a 2-core CPU, forward + backward):

- a grouped conv over the batch folded into channels (the release's way): best on large
  feature maps, but its backward is pathologically slow on small ones (1.6 s against 80 ms for
  batch 64, 128 channels, 8x8);
- im2col (``unfold``) and a batched matmul: best on small maps and for 1x1 kernels, where no
  unfold is needed at all;
- :func:`mixture_conv2d`: the same from kernels still in the cell order of the assembly;
- :func:`mixed_input_conv2d`: no per-sample kernels at all, for maps so small that mixing the
  input is cheaper than assembling kernels.

:func:`choose_path` picks one for a conv and an input size.
"""
import threading
import warnings
from contextlib import contextmanager
from typing import Iterator, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from .cpu_kernels import (AVX512_CPU, CPU_KERNELS, cpu_kernels,  # noqa: F401 (re-exported)
                          matmul_kernels, matmul_library)

# Above this many output positions a kxk per-sample conv uses the grouped conv, by CPU kernel
# library (see CPU_KERNELS). A depthwise one always does: as im2col and a batched matmul it would
# be B x C products of a 1 x kh*kw row, against one depthwise conv over B x C channels (on a
# 2-core EPYC limited to AVX2 a KW 1x MobileNetV2 ran 1.5x faster in inference, 1.2x in training).
UNFOLD_MAX_POSITIONS = {'blas': 196, 'onednn': 0}

# Which library (BLAS or oneDNN) runs the products of a dynamic conv on the CPU is measured
# per machine: see mmkw/ops/cpu_kernels.py.


def prefers_onednn(x: torch.Tensor) -> bool:
    # An exported graph runs on its runtime's GEMM, not on torch's oneDNN: the BLAS choices
    # then, which also keeps the graph the same on every machine that exports it.
    return x.device.type == 'cpu' and cpu_kernels() == 'onednn' and \
        not in_export_formulation()


# Where oneDNN's 1x1 convolution is the faster matmul, it is so from this many rows of ``a`` on
# (measured on the assembly shapes of an AVX-512 EPYC: 2x slower at 9 rows, 1.5x faster at 72)
# and from this many columns of ``b`` on, which the convolution sees as positions of its map.
# On the warehouse shapes of the mixed-input path (EPYC of family 25, 128-512 rows, 4.6k-14k
# inner) it ran 1.25-2.2x slower than BLAS forward and backward at 16-32 columns, 1.1-1.4x at
# 64, and level at 128-256. A KW ResNet-18 at 8x8 pixels, whose stages 3 and 4 mix their 2x2
# and 1x1 maps at 16 samples (16-64 columns), trained 1.27x faster with BLAS there.
ONEDNN_MATMUL_MIN_ROWS = 32
ONEDNN_MATMUL_MIN_COLUMNS = 128


def matmul2d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for ``a`` ``[M, K]`` and a contiguous ``b`` ``[K, N]``, as a 1x1 convolution
    where oneDNN is the faster matmul library (:func:`~mmkw.ops.cpu_kernels.matmul_library`)."""
    # the export formulation first: under torch.export a comparison on the rows, which count
    # samples, would put a guard on the batch size into the graph
    if in_export_formulation() or a.device.type != 'cpu' or \
            a.shape[0] < ONEDNN_MATMUL_MIN_ROWS or b.shape[1] < ONEDNN_MATMUL_MIN_COLUMNS or \
            in_release_formulation():
        return torch.mm(a, b)
    return _MATMULS[matmul_library(a, b, _MATMULS)](a, b)


def _onednn_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    rows, inner = a.shape
    return F.conv2d(b.reshape(1, inner, 1, -1), a.reshape(rows, inner, 1, 1)).view(rows, -1)


# the same product by each library, as matmul_library times and picks them
_MATMULS = {'blas': torch.mm, 'onednn': _onednn_matmul}


# Flags that the code being run sets around a region (also during a recomputation in the
# backward pass, which runs the same code): thread-local, restored on exit.
_flags = threading.local()


@contextmanager
def _flag(name: str) -> Iterator[None]:
    previous = getattr(_flags, name, False)
    setattr(_flags, name, True)
    try:
        yield
    finally:
        setattr(_flags, name, previous)


def keep_output():
    """Marks the per-sample convolution (or the warehouse matmul of the mixed-input path), whose
    output a recomputing backward keeps (see
    :func:`mmkw.ops.kw_conv.convolve_recomputing_kernels`). Only that product may run inside:
    a recomputing backward keeps the output of every convolution or matmul in it."""
    return _flag('keep_output')


def output_kept() -> bool:
    return getattr(_flags, 'keep_output', False)


def release_formulation():
    """Runs every KW conv as the official release does, which is also the formulation whose
    multiply-adds the paper counts: one matmul assembles the per-sample kernels, they are
    permuted into convolution layout, one grouped convolution over the batch applies them, and
    they are kept for backward. For FLOP counts, and to time mmkw's paths against the release's
    in one process (``tools/analysis/benchmark.py --release-formulation``)."""
    return _flag('release')


def in_release_formulation() -> bool:
    return getattr(_flags, 'release', False)


def export_formulation():
    """Runs every dynamic conv in the formulation that exports with a dynamic batch axis
    (ONNX, ``torch.jit.trace``, ``torch.export``): no shape in the graph depends on the batch
    size, and no Python arithmetic on it is baked into the graph.

    The per-sample convolution is always ``unfold`` and a batched matmul (never the grouped
    convolution over the batch, whose group count and kernel shape are ``B x`` those of the
    conv), matmuls are matmuls (not oneDNN 1x1 convolutions, whose kernel shape would be the
    batch's), the whole batch runs as one chunk and no kernel is recomputed in backward. Every
    path stays exact (``tests/test_tools/test_deployment.py`` compares it with the normal
    forward, for every method).

    It is on inside this context, and also whenever torch traces or exports the model
    (:func:`in_export_formulation`), so ``torch.onnx.export``, ``torch.jit.trace`` and
    ``torch.export.export`` select it by themselves; the context is for tests and for tracing
    code that torch does not flag.
    """
    return _flag('export')


def in_export_formulation() -> bool:
    """Whether dynamic convs run in :func:`export_formulation`: inside that context, or while
    ``torch.jit.trace`` / the TorchScript ONNX exporter traces (``torch.jit.is_tracing``) or
    ``torch.export`` / the dynamo ONNX exporter traces (``torch.compiler.is_exporting``).
    ``torch.compile`` keeps the normal paths."""
    return getattr(_flags, 'export', False) or torch.jit.is_tracing() or \
        torch.compiler.is_exporting()


def static_int(size) -> int:
    """A tensor size as a Python int, also while ``torch.jit.trace`` records sizes as graph
    values; only for sizes that cannot depend on the input (a kernel's)."""
    if isinstance(size, torch.Tensor):
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', torch.jit.TracerWarning)
            return int(size)
    return int(size)


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def single_pixel_aware_conv2d(x: torch.Tensor, weight: torch.Tensor,
                              bias: Optional[torch.Tensor], stride: Tuple[int, int],
                              padding: Tuple[int, int], dilation: Tuple[int, int],
                              groups: int) -> torch.Tensor:
    """``F.conv2d`` (one kernel for the batch), as a matmul with the kernel's centre tap where
    a 1x1 map meets only that tap (a 'same'-padded kxk conv with odd kh and kw on the last stage
    of a network on 8x8 images): oneDNN convolves all kh x kw taps and computes the gradient of
    every one, the zero ones too. A KernelDNA ResNet-18's stage-4 3x3 convs on the digits demo's
    1x1 maps took 12.6 ms backward on 2 cores capped to AVX2 (5 ms with AVX-512); as a matmul,
    well under 1."""
    kh, kw = weight.shape[-2:]
    # an even kernel has no centre tap: 'same' padding then puts every tap on padding
    if x.shape[-2:] == (1, 1) and groups == 1 and kh % 2 == kw % 2 == 1 and \
            not in_export_formulation() and \
            padding[0] == dilation[0] * (kh - 1) // 2 == dilation[0] * (kh - 1) / 2 and \
            padding[1] == dilation[1] * (kw - 1) // 2 == dilation[1] * (kw - 1) / 2:
        out = F.linear(x.flatten(1), weight[:, :, kh // 2, kw // 2], bias)
        return out.view(*out.shape, 1, 1)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


def per_sample_conv2d(x: torch.Tensor, weight: torch.Tensor, stride: Tuple[int, int],
                      padding: Tuple[int, int], dilation: Tuple[int, int],
                      groups: int) -> torch.Tensor:
    """``out[b] = conv2d(x[b], weight[b])``.

    Args:
        x: ``[B, C_in, H, W]``.
        weight: ``[B, C_out, C_in / groups, kh, kw]``.

    Returns:
        ``[B, C_out, H_out, W_out]``.
    """
    batch, channels, height, width = x.shape
    out_channels, kh, kw = weight.shape[1], weight.shape[3], weight.shape[4]
    export = in_export_formulation()
    if export:
        # a tracer records tensor sizes as graph values; unfold's kernel size must be constant
        # (it is: the conv's)
        kh, kw = static_int(kh), static_int(kw)
    out_h = conv_output_size(height, kh, stride[0], padding[0], dilation[0])
    out_w = conv_output_size(width, kw, stride[1], padding[1], dilation[1])
    release = in_release_formulation() and not export
    if kh == kw == 1 and padding == (0, 0) and not release:
        if stride != (1, 1):
            x = x[:, :, ::stride[0], ::stride[1]]
        cols = x.reshape(batch * groups, channels // groups, out_h * out_w)
    elif export or not release and channels != groups and \
            out_h * out_w <= UNFOLD_MAX_POSITIONS['onednn' if prefers_onednn(x) else 'blas']:
        cols = F.unfold(x, (kh, kw), dilation, padding, stride)
        cols = cols.view(batch * groups, channels // groups * kh * kw, out_h * out_w)
    else:
        x = x.reshape(1, batch * channels, height, width)
        weight = weight.reshape(batch * out_channels, *weight.shape[2:])
        with keep_output():
            out = F.conv2d(x, weight, None, stride, padding, dilation, batch * groups)
        return out.view(batch, out_channels, out_h, out_w)
    kernels = weight.reshape(batch * groups, out_channels // groups, -1)
    return torch.bmm(kernels, cols).view(batch, out_channels, out_h, out_w)


# At most this many output positions, a groups=1 KW conv contracts the input directly with the
# cell-ordered kernels (mixture_conv2d) instead of permuting them into conv layout.
MIXTURE_MAX_POSITIONS = 100


def mixture_conv2d(x: torch.Tensor, mixed: torch.Tensor, kernel_size: Tuple[int, int],
                   stride: Tuple[int, int], padding: Tuple[int, int],
                   dilation: Tuple[int, int]) -> torch.Tensor:
    """Per-sample conv (groups=1) from kernels still in the cell order of the assembly.

    The assembly matmul yields ``mixed[b, s, o, c]``, the ``[c_out, c_in]`` cell of kernel
    position ``s``, output group ``o`` and input group ``c``. Permuting it into a
    ``[C_out, C_in, kh, kw]`` kernel copies ``B * params`` numbers forward and backward, the
    largest tensors of a KW network. Instead each cell multiplies its slice of the unfolded
    input and the products are summed over ``s`` and ``c``; worthwhile when the output has few
    positions, so the ``[B, s, o, c, c_out, L]`` products stay small.

    Args:
        x: ``[B, C_in, H, W]``.
        mixed: ``[B, S, G_out, G_in, c_out, c_in]`` with ``S = kh * kw``.

    Returns:
        ``[B, G_out * c_out, H_out, W_out]``.
    """
    batch, _, height, width = x.shape
    _, spatial, groups_out, groups_in, cell_out, cell_in = mixed.shape
    kh, kw = kernel_size
    out_h = conv_output_size(height, kh, stride[0], padding[0], dilation[0])
    out_w = conv_output_size(width, kw, stride[1], padding[1], dilation[1])
    if kh == kw == 1 and padding == (0, 0):
        if stride != (1, 1):
            x = x[:, :, ::stride[0], ::stride[1]]
        cols = x.reshape(batch, 1, 1, groups_in, cell_in, out_h * out_w)
    else:
        cols = F.unfold(x, kernel_size, dilation, padding, stride)
        cols = cols.view(batch, groups_in, cell_in, spatial, out_h * out_w)
        cols = cols.permute(0, 3, 1, 2, 4).unsqueeze(2)
    products = torch.matmul(mixed, cols)  # [B, S, G_out, G_in, c_out, L]
    return products.sum(dim=(1, 3)).view(batch, groups_out * cell_out, out_h, out_w)


def mixed_input_conv2d(x: torch.Tensor, attention: torch.Tensor, cells: torch.Tensor,
                       mixture_grid: Tuple[int, int, int], kernel_size: Tuple[int, int],
                       stride: Tuple[int, int], padding: Tuple[int, int],
                       dilation: Tuple[int, int]) -> torch.Tensor:
    """A groups=1 KW conv with 1x1 cells that mixes the input instead of the cells.

    With kernel position ``s``, output group ``o``, input group ``c`` and warehouse cell ``j``,
    Eq. 3 gives ``y[b, o] = sum_{s,c} (sum_j alpha[b,s,o,c,j] E_j) x[b,s,c]``, where
    ``x[b,s,c]`` is the unfolded input slice the cell meets. Reordering the sums,
    ``y[b, o] = sum_j E_j z[b,o,j]`` with ``z[b,o,j] = sum_{s,c} alpha[b,s,o,c,j] x[b,s,c]``:
    the attention mixes the input, and one matmul over the whole batch applies the
    warehouse. It costs about ``n * L`` multiply-adds per cell weight and sample (``L``
    output positions) against ``S * G_in * (n + L)`` for assembling kernels and convolving,
    and it never holds ``B x params`` kernels: the better choice on small feature maps.

    Args:
        x: ``[B, C_in, H, W]``.
        attention: ``[B, m, n]``, mixtures in the release order ``(s, o, c)``.
        cells: the warehouse, ``[n, c_out, c_in, 1, 1]``.
        mixture_grid: ``(S, G_out, G_in)``.

    Returns:
        ``[B, G_out * c_out, H_out, W_out]``.
    """
    batch, _, height, width = x.shape
    spatial, groups_out, groups_in = mixture_grid
    num_cells, cell_out, cell_in = cells.shape[:3]
    kh, kw = kernel_size
    out_h = conv_output_size(height, kh, stride[0], padding[0], dilation[0])
    out_w = conv_output_size(width, kw, stride[1], padding[1], dilation[1])
    positions = out_h * out_w
    if kh == kw == 1 and padding == (0, 0):
        if stride != (1, 1):
            x = x[:, :, ::stride[0], ::stride[1]]
        cols = x.reshape(batch, groups_in, cell_in, 1, positions)
    else:
        cols = F.unfold(x, kernel_size, dilation, padding, stride)
        cols = cols.view(batch, groups_in, cell_in, spatial, positions)
    alpha = attention.view(batch, spatial, groups_out, groups_in, num_cells)
    # z laid out [j, cell_in, (b, o, l)], so that the warehouse applies in one product
    mixed = torch.einsum('bsocj,bcisl->jibol', alpha, cols)
    columns = batch * groups_out * positions
    if warehouse_by_cell(columns, cell_in):
        # not kept by a recomputing backward: the partial products are n times the output
        out = torch.bmm(cells.view(num_cells, cell_out, cell_in),
                        mixed.reshape(num_cells, cell_in, columns)).sum(0)
    else:
        warehouse = cells.reshape(num_cells, cell_out, cell_in).transpose(0, 1)
        warehouse = warehouse.reshape(cell_out, num_cells * cell_in)
        with keep_output():
            out = matmul2d(warehouse, mixed.reshape(num_cells * cell_in, columns))
    out = out.view(cell_out, batch, groups_out, positions).permute(1, 2, 0, 3)
    return out.reshape(batch, groups_out * cell_out, out_h, out_w)


def warehouse_by_cell(columns: int, cell_in: int) -> bool:
    """Whether the mixed-input path applies the warehouse cell by cell (a batched matmul over
    the cells, then a sum) rather than as one matmul over all cells.

    One matmul needs the warehouse as ``[c_out, (n, c_in)]``, a copy of all ``n x c_out x c_in``
    numbers out of the cell order ``[n, c_out, c_in]``, and its gradient copied back in
    training; by cell, the partial products ``[n, c_out, columns]`` are summed instead, which
    costs less for few columns (output positions of the batch). Timed on an EPYC of family 25
    (n = 27-56 cells of 64-512 channels): forward and backward, by cell ran 1.1-2x faster from
    16 to 392 columns of 512 input channels and level at 512 of 64; forward only, 1.25x faster
    at 16 and 64 columns of 512 and 256 channels, level at 128-392 of 512 and 256 of 256, and
    1.3x slower at 512 of 64. Exported graphs keep one product for every batch size.
    """
    if in_export_formulation():
        return False
    return columns <= (cell_in if torch.is_grad_enabled() else cell_in // 2)


# Mixing the input is chosen when its multiply-adds are at most this many times those of
# assembling kernels, by CPU kernel library (see CPU_KERNELS). The assembly writes B x params
# numbers and is bound by memory, so it runs slower per multiply-add than the warehouse matmul.
# With BLAS (2-core AVX2 CPU) mixing is 1.2x faster at a ratio of 1.4 and as fast at 2 (where it
# needs more memory for backward, which the assembled paths avoid by recomputing kernels), and
# 2.3x slower at 3. With oneDNN (2-core AVX-512 CPU), whose warehouse matmul is faster, mixing
# the 7x7 stage-4 maps of a KW ResNet-18 at 224x224 (ratio 2) makes the whole network 1.15x
# faster in inference and 1.2x in training, and mixing its 14x14 maps (ratio 4.4) 1.5x slower.
# In inference oneDNN's higher ratio needs AVX-512, which doubles the multiply-adds per cycle of
# the warehouse matmul while the assembly stays bound by memory: on a 2-core AVX2 EPYC (family
# 25) that chose oneDNN, the ratio of 1.5 ran KW ResNet-18 and ResNet-50 at 224x224, batch 8,
# 1.12x and 1.09x faster than 3 (MobileNetV2, ConvNeXt-T and KW 4x ResNet-18 within 4% either
# way; interleaved A/B, one process). Training keeps 3 there: 1.5 gained only 1.02x and 1.07x,
# and the kernels it assembles took KW ResNet-18's peak memory at batch 32 to 1206 MiB, 1.55x
# the plain network's (mixed: 1.40x).
MIXED_INPUT_MAX_COST_RATIO = {'blas': 1.5, 'onednn': 3.0}


def choose_path(batch: int, positions: int, num_cells: int, mixture_grid: Tuple[int, int, int],
                cell_shape: Tuple[int, ...], groups: int, onednn: bool = False) -> str:
    """How a KW conv runs on an input with ``positions`` output positions.

    Returns 'mixed_input' (:func:`mixed_input_conv2d`), 'mixture' (assemble, then
    :func:`mixture_conv2d`) or 'assembled' (assemble kernels in conv layout, then
    :func:`per_sample_conv2d`). ``onednn``: the per-sample conv runs best as oneDNN's grouped
    conv (see :mod:`mmkw.ops.cpu_kernels`), so the batched matmuls of 'mixture' are not chosen,
    and the input is mixed up to a higher cost ratio (in inference on AVX-512 CPUs only).
    """
    if groups != 1 or tuple(cell_shape[2:]) != (1, 1) or in_release_formulation():
        return 'assembled'
    spatial, _, groups_in = mixture_grid
    cell_out = cell_shape[0]
    # multiply-adds per cell weight and sample (see mixed_input_conv2d)
    mixed_cost = num_cells * positions * (1 + spatial * groups_in / cell_out)
    assembled_cost = spatial * groups_in * (num_cells + positions)
    higher_ratio = onednn and (AVX512_CPU or torch.is_grad_enabled())
    max_ratio = MIXED_INPUT_MAX_COST_RATIO['onednn' if higher_ratio else 'blas']
    # Mixing the input saves writing B x params kernel numbers; one sample's kernel is written
    # once either way and then runs as one plain convolution (the release's way), so one sample
    # never mixes: a KW ResNet-18 at batch 1 inferred 1.13x (AVX-512) and 1.67x (AVX2) slower
    # with its 14x14 and 7x7 maps mixed. Exported graphs keep one path for every batch size.
    # Mixing also writes the output once more, permuted out of the warehouse matmul's layout,
    # where assembling writes and reads B x params kernel numbers: it only pays where a
    # sample's output (C_out x positions numbers) is smaller than its kernel (C_out x fan-in).
    # A KW ConvNeXt-T's 4x4 stem and first 2x2 downsampling conv (16 and 4 cells, so about as
    # many multiply-adds either way, on 56x56 and 28x28 maps) ran 2.2x and 1.4x slower mixed.
    smaller_output = positions < spatial * groups_in * cell_shape[1]
    if (in_export_formulation() or batch > 1) and smaller_output and \
            mixed_cost <= max_ratio * assembled_cost:
        return 'mixed_input'
    return 'mixture' if positions <= MIXTURE_MAX_POSITIONS and not onednn else 'assembled'


# Per-sample kernels of at most this many numbers are assembled at once; larger batches are
# split into chunks (192 MiB in fp32: a KW ResNet-18 stage-4 conv assembles 20 samples at once).
# Each chunk reads the whole warehouse again (a KW 4x ResNet-18's stage-4 warehouse holds 28M
# numbers, more than 10 samples' kernels), so chunks of 96 MiB trained KW ResNet-18s at batch 32
# 1.04-1.08x (1x) and 1.10x (4x) slower (interleaved A/B on an AVX2 EPYC of family 25; ResNet-50
# KW 1x level) for 1% and 5% less peak memory (1083 / 1094 and 1683 / 1764 MiB; ConvNeXt-T and
# ResNet-50 KW 1x 2%).
KERNEL_CHUNK_NUMEL = 48 * 2**20

# With recompute_kernels='auto', a training step assembles the kernels of a conv again in the
# backward pass when the batch's kernels hold more numbers than this (32 MiB in fp32) rather
# than keeping them. At 16 MiB the batch-8 kernels of a KW ResNet-18's stage 3 and of a KW
# ConvNeXt-T's stage-3 pointwise convs (4.7M numbers each) were assembled again: keeping them
# trained 1.015x (KW 1x), 1.035x (KW 4x) and 1.064x (ConvNeXt-T) faster (interleaved A/B on an
# EPYC of family 25), and a KW 1x ResNet-18 at batch 32 peaks at 1.40x the plain network's
# memory instead of 1.33x (1088 / 779 MiB).
RECOMPUTE_MIN_NUMEL = 8 * 2**20

# Between RECOMPUTE_MIN_NUMEL and this (96 MiB in fp32), 'auto' keeps the kernels of a conv
# whose assembly is expensive against its convolution: where assembling once more would add
# more than RECOMPUTE_MAX_SHARE to the multiply-adds of the conv's training step. A KW 4x
# ResNet-18's stage-4 convs mix 108-188 cells per kernel number and use each number at 49
# output positions (share 0.23-0.26), and their batch-8 kernels hold 9.4-19M numbers;
# assembling them again made its training step 1.12x slower (2688 vs 2401 ms; KW 4x ResNet-50
# 1.14x, interleaved A/B on an AVX2 EPYC of family 25). Larger kernels are assembled again,
# which the memory at batch 32 needs.
RECOMPUTE_MAX_NUMEL = 24 * 2**20
RECOMPUTE_MAX_SHARE = 0.2


def recompute_share(redone_macs: float, other_macs: float) -> float:
    """The share of a layer's training-step multiply-adds that recomputing adds, where the
    recomputed forward part costs ``redone_macs`` and the rest of the forward ``other_macs``
    (backward costs about twice the forward, so the step is three forwards)."""
    return redone_macs / (3 * (redone_macs + other_macs))


def auto_recomputes(kept_numel: int, share: float) -> bool:
    """What ``recompute_kernels='auto'`` decides for a layer whose batch keeps ``kept_numel``
    numbers for backward, where recomputing them adds ``share`` to its training step (see
    :func:`recompute_share`): keep small ones, recompute very large ones, and in between only
    those that are cheap to recompute."""
    if kept_numel <= RECOMPUTE_MIN_NUMEL:
        return False
    return kept_numel > RECOMPUTE_MAX_NUMEL or share <= RECOMPUTE_MAX_SHARE


def recomputes(policy: Union[bool, str], kept_numel: int, share: float) -> bool:
    """Whether a layer with ``recompute_kernels=policy`` (True, False or 'auto') assembles its
    kernels again in the backward pass, for a batch keeping ``kept_numel`` numbers where
    recomputing adds ``share`` to its training step (:func:`auto_recomputes` for 'auto')."""
    return policy is True or (policy == 'auto' and auto_recomputes(kept_numel, share))


def batch_chunks(batch: int, kernel_numel: int,
                 max_numel: Optional[int] = None) -> List[Tuple[int, int]]:
    """``(start, end)`` sample ranges of near-equal size whose assembled kernels
    (``kernel_numel`` numbers per sample) stay within ``max_numel`` (default
    ``KERNEL_CHUNK_NUMEL``) where possible."""
    max_numel = max_numel or KERNEL_CHUNK_NUMEL
    num_chunks = min(batch, max(1, -(-batch * kernel_numel // max_numel)))
    size = -(-batch // num_chunks)
    return [(start, min(start + size, batch)) for start in range(0, batch, size)]
