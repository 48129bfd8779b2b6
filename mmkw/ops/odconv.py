"""Omni-dimensional dynamic convolution (ODConv; Li, Zhou and Yao, ICLR 2022).

One of the peers the KW paper compares against (Tables 1-4, 10, 12). An ODConv layer holds
``K`` kernels ``W_i`` ``[C_out, C_in / g, k, k]`` and an attention with four heads on a shared
trunk, each head's logits divided by the temperature ``T`` before its function:

- channel ``a_c`` ``[B, C_in]`` (sigmoid), which scales the input channels;
- filter ``a_f`` ``[B, C_out]`` (sigmoid), which scales the output channels; absent for
  depthwise convs (``C_in == groups == C_out``), where it is 1;
- spatial ``a_s`` ``[B, k * k]`` (sigmoid), which scales the kernel positions; absent for 1x1
  convs;
- kernel ``a_w`` ``[B, K]`` (softmax over the K kernels), which mixes them; absent for K = 1.

Per sample, ``y = a_f * conv(a_c * x, sum_i a_w[i] * a_s * W_i)`` (paper Eq. 3-4).

The math, skip rules, initialisation and state-dict names are those of the official release
(github.com/OSVAI/ODConv, ``modules/odconv.py``), so its checkpoints load by renaming module
paths only (see :mod:`mmkw.converters.odconv_official`); ``../shared/notes/peers_format.md`` §2
describes the format and ``../shared/fixtures/official_odconv`` holds reference outputs and
gradients of the official layer, reproduced to 1e-5 (``tests/test_ops/test_odconv.py``).

Execution (every path exact, tested against :meth:`DynamicConv2d.reference_forward`): the
channel and filter attentions are applied to the activations, as the release does, never folded
into per-sample kernels; with K = 1 and a 1x1 kernel nothing else is dynamic and the conv is a
plain one between the two scalings ('plain'); otherwise the per-sample kernels
``sum_i a_w[i] * a_s * W_i`` are assembled by one matmul and applied by
:func:`~mmkw.ops.per_sample_conv.per_sample_conv2d` ('assembled'), with the base class's batch
chunking and recomputation in backward.
"""
import math
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.registry import MODELS
from torch.nn.modules.utils import _pair

from .attention_options import CAF_EPS
from .dynamic_conv import (Attention, DynamicAttention, KernelBankConv2d,
                           channel_scales_to_kernel)
from .norm_guard import check_norm_batch
from .per_sample_conv import matmul2d, per_sample_conv2d

# Functions over the K kernel logits (Table 10 swaps the peers' softmax for KW's CAF).
KERNEL_ATTENTION_FUNCTIONS = ('softmax', 'caf')


def check_kernel_attention_function(name: str, layer: str) -> str:
    """Return ``name`` if it is one of ``KERNEL_ATTENTION_FUNCTIONS``, else raise naming
    ``layer``."""
    if name not in KERNEL_ATTENTION_FUNCTIONS:
        raise ValueError(f'{layer}: attention_function must be one of '
                         f'{KERNEL_ATTENTION_FUNCTIONS}, got {name!r}')
    return name


def kernel_mixture_attention(logits: torch.Tensor, temperature: float,
                             function: str) -> torch.Tensor:
    """Attentions over the K kernels from logits ``[B, K]``, divided by the temperature first.

    'softmax' is the peers' own function (DY-Conv, ODConv). 'caf' is KW's contrasting-driven
    function ``z / (sum_j |z_j| + 1e-3)`` (Eq. 4) over the K logits, as the KW paper's Table 10
    puts it into DY-Conv and ODConv; there is no zero cell, so the layer keeps the parameters of
    its softmax version. CAF is invariant to scaling its logits but for its epsilon:
    ``(z / T) / (sum |z / T| + eps) = z / (sum |z| + T * eps)``, so under CAF the temperature
    schedule leaves the kernel attention practically unchanged (at T = 30 the epsilon becomes
    0.03) and acts only through ODConv's sigmoid heads.
    """
    z = logits / temperature
    if function == 'softmax':
        return torch.softmax(z, dim=1)
    return z / (z.abs().sum(dim=1, keepdim=True) + CAF_EPS)


def _head_init(module: nn.Module) -> None:
    # the release's init of every attention conv: kaiming-normal fan_out, zero bias; BN 1/0
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ODConvAttention(DynamicAttention):
    """The four attentions of an ODConv layer (paper §3.2, Figure 2).

    Trunk: global average pooling -> ``fc`` (1x1 conv ``C_in -> h``, no bias) -> ``bn``
    (BatchNorm2d) -> ReLU, with ``h = max(int(C_in * reduction), min_channels)``. Heads (1x1
    convs with bias on the trunk): ``channel_fc`` (``h -> C_in``), ``filter_fc`` (``h -> C_out``,
    not for depthwise convs), ``spatial_fc`` (``h -> kh * kw``, not for 1x1 kernels),
    ``kernel_fc`` (``h -> K``, not for K = 1). Every head's logits are divided by the
    temperature T (``temperature``; 30 -> 1 during the warm-up of pretraining, 1 otherwise).

    Args:
        in_channels, out_channels, kernel_size, groups: those of the conv.
        kernel_num: K.
        reduction: hidden width ratio (the release's 1/16).
        min_channels: smallest hidden width (the release's 16).
        attention_function: over the K kernels, 'softmax' (the release) or 'caf' (KW's
            function, the KW paper's Table 10); see :func:`kernel_mixture_attention`.

    ``forward`` maps ``[B, C_in, H, W]`` to the attentions of the present heads, in the order
    channel ``[B, C_in]``, filter ``[B, C_out]``, spatial ``[B, kh * kw]``, kernel ``[B, K]``
    (see ``has_filter``, ``has_spatial``, ``has_kernel``).
    """

    final_temperature = 1.0
    temperature_range = (1.0, math.inf)

    def __init__(self, in_channels: int, out_channels: int,
                 kernel_size: Union[int, Tuple[int, int]], groups: int = 1, kernel_num: int = 4,
                 reduction: float = 1 / 16, min_channels: int = 16,
                 attention_function: str = 'softmax') -> None:
        super().__init__()
        kh, kw = _pair(kernel_size)
        self.hidden_channels = max(int(in_channels * reduction), min_channels)
        self.attention_function = check_kernel_attention_function(
            attention_function, 'ODConvAttention')
        self.has_filter = not (in_channels == groups == out_channels)
        self.has_spatial = kh * kw > 1
        self.has_kernel = kernel_num > 1
        hidden = self.hidden_channels
        self.layer_name = (f'ODConv attention of a {in_channels}->{out_channels} {kh}x{kw} '
                           f'conv (K={kernel_num})')
        self.fc = nn.Conv2d(in_channels, hidden, 1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.relu = nn.ReLU(inplace=True)
        self.channel_fc = nn.Conv2d(hidden, in_channels, 1)
        if self.has_filter:
            self.filter_fc = nn.Conv2d(hidden, out_channels, 1)
        if self.has_spatial:
            self.spatial_fc = nn.Conv2d(hidden, kh * kw, 1)
        if self.has_kernel:
            self.kernel_fc = nn.Conv2d(hidden, kernel_num, 1)
        _head_init(self)

    def forward(self, x: torch.Tensor) -> Attention:
        pooled = x.mean(dim=(2, 3), keepdim=True)
        hidden = self.fc(pooled)
        check_norm_batch(self.bn, hidden, self.layer_name)
        hidden = self.relu(self.bn(hidden))
        temperature = self.temperature
        attentions = [torch.sigmoid(self.channel_fc(hidden).flatten(1) / temperature)]
        if self.has_filter:
            attentions.append(torch.sigmoid(self.filter_fc(hidden).flatten(1) / temperature))
        if self.has_spatial:
            attentions.append(torch.sigmoid(self.spatial_fc(hidden).flatten(1) / temperature))
        if self.has_kernel:
            attentions.append(kernel_mixture_attention(self.kernel_fc(hidden).flatten(1),
                                                       temperature, self.attention_function))
        return tuple(attentions)


class _Heads:
    """The attentions of one ODConv call by name (None for an absent head)."""
    __slots__ = ('channel', 'filter', 'spatial', 'kernel')

    def __init__(self, attention: ODConvAttention, tensors: Attention) -> None:
        self.channel = tensors[0]
        index = 1
        self.filter = self.spatial = self.kernel = None
        if attention.has_filter:
            self.filter = tensors[index]
            index += 1
        if attention.has_spatial:
            self.spatial = tensors[index]
            index += 1
        if attention.has_kernel:
            self.kernel = tensors[index]


@MODELS.register_module()
class ODConv2d(KernelBankConv2d):
    """Omni-dimensional dynamic 2D convolution, a drop-in replacement of ``nn.Conv2d``.

    Build it directly or through mmcv's ``build_conv_layer(dict(type='ODConv2d',
    kernel_num=4), in_channels, out_channels, kernel_size, stride=..., padding=...,
    groups=..., bias=...)``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as for
            ``nn.Conv2d`` (numeric padding; the release has no bias, ``bias=True`` adds a
            static one).
        kernel_num: K, the kernels mixed per sample (1 or 4 in the KW paper's tables).
        reduction: attention hidden width ratio (1/16 in the release).
        min_channels: smallest attention hidden width (16 in the release).
        attention_function: 'softmax' over the K kernels (the release) or 'caf' (Table 10;
            the temperature then acts through the sigmoid heads only, see
            :func:`kernel_mixture_attention`).
        recompute_kernels: True, False or 'auto' (see :class:`DynamicConv2d`).

    Parameters: ``weight`` ``[K, C_out, C_in / groups, kh, kw]`` (each ``W_i`` kaiming-normal,
    fan_out, as the release) and ``attention`` (:class:`ODConvAttention`).
    Execution paths: 'plain' (K = 1 and a 1x1 kernel) and 'assembled' (see the module
    docstring).
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 kernel_size: Union[int, Tuple[int, int]],
                 stride: Union[int, Tuple[int, int]] = 1,
                 padding: Union[int, Tuple[int, int]] = 0,
                 dilation: Union[int, Tuple[int, int]] = 1,
                 groups: int = 1,
                 bias: bool = False,
                 *,
                 kernel_num: int = 4,
                 reduction: float = 1 / 16,
                 min_channels: int = 16,
                 attention_function: str = 'softmax',
                 recompute_kernels: Union[bool, str] = 'auto') -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, kernel_num, reduction, recompute_kernels)
        self.attention = ODConvAttention(in_channels, out_channels, self.kernel_size, groups,
                                         kernel_num, reduction, min_channels, attention_function)
        self.reset_parameters()

    # ------------------------------------------------------------ the DynamicConv2d contract
    def execution_path(self, x: torch.Tensor) -> str:
        """'plain' when nothing but the channel and filter scalings is dynamic (K = 1, 1x1
        kernel), else 'assembled'."""
        if self.kernel_num == 1 and not self.attention.has_spatial:
            return 'plain'
        return 'assembled'

    def held_numel(self, x: torch.Tensor, path: str) -> int:
        return 0 if path == 'plain' else super().held_numel(x, path)

    def mix_kernels(self, spatial: Optional[torch.Tensor],
                    kernel: Optional[torch.Tensor], batch: int) -> torch.Tensor:
        """``sum_i a_w[i] * a_s * W_i`` for every sample: ``[B, C_out, C_in / g, kh, kw]``
        from the spatial ``[B, kh * kw]`` and kernel ``[B, K]`` attentions (None: absent)."""
        positions = self.kernel_size[0] * self.kernel_size[1]
        if kernel is not None:
            weight = self.weight.to(kernel.dtype)
            mixed = matmul2d(kernel, weight.view(self.kernel_num, -1))
        else:
            dtype = spatial.dtype if spatial is not None else self.weight.dtype
            mixed = self.weight.to(dtype).view(1, -1).expand(batch, -1)
        if spatial is not None:
            mixed = mixed.view(batch, -1, positions) * spatial.view(batch, 1, positions)
        return mixed.reshape(batch, *self.weight_shape)

    def effective_kernels(self, attention: Attention) -> torch.Tensor:
        heads = _Heads(self.attention, attention)
        batch = heads.channel.shape[0]
        kernels = self.mix_kernels(heads.spatial, heads.kernel, batch)
        return channel_scales_to_kernel(kernels, heads.channel, heads.filter, self.groups)

    def convolve(self, x: torch.Tensor, attention: Attention, path: str) -> torch.Tensor:
        """``a_f * conv(a_c * x, kernels)`` for a chunk of samples."""
        heads = _Heads(self.attention, attention)
        batch = x.shape[0]
        x = x * heads.channel.view(batch, -1, 1, 1)
        if path == 'plain':
            out = F.conv2d(x, self.weight[0].to(x.dtype), None, self.stride, self.padding,
                           self.dilation, self.groups)
        else:
            out = per_sample_conv2d(x, self.mix_kernels(heads.spatial, heads.kernel, batch),
                                    self.stride, self.padding, self.dilation, self.groups)
        if heads.filter is not None:
            out = out * heads.filter.view(batch, -1, 1, 1)
        return out
