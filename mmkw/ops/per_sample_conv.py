"""Convolution of every sample with its own kernel, the second half of a KW conv.

Two exact formulations, chosen by shape (timings on a 2-core CPU, forward + backward):

- a grouped conv over the batch folded into channels (the release's way): best on large
  feature maps, but its backward is pathologically slow on small ones (1.6 s against 80 ms for
  batch 64, 128 channels, 8x8);
- im2col (``unfold``) and a batched matmul: best on small maps and for 1x1 kernels, where no
  unfold is needed at all.
"""
from typing import Tuple

import torch
import torch.nn.functional as F

# Above this many output positions a kxk per-sample conv uses the grouped conv.
UNFOLD_MAX_POSITIONS = 196


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


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
    out_h = conv_output_size(height, kh, stride[0], padding[0], dilation[0])
    out_w = conv_output_size(width, kw, stride[1], padding[1], dilation[1])
    if kh == kw == 1 and padding == (0, 0):
        if stride != (1, 1):
            x = x[:, :, ::stride[0], ::stride[1]]
        cols = x.reshape(batch * groups, channels // groups, out_h * out_w)
    elif out_h * out_w <= UNFOLD_MAX_POSITIONS:
        cols = F.unfold(x, (kh, kw), dilation, padding, stride)
        cols = cols.view(batch * groups, channels // groups * kh * kw, out_h * out_w)
    else:
        out = F.conv2d(x.reshape(1, batch * channels, height, width),
                       weight.reshape(batch * out_channels, *weight.shape[2:]), None, stride,
                       padding, dilation, batch * groups)
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
