"""Dynamic convolution (DY-Conv; Chen et al., CVPR 2020), as the KW paper compares against it.

No official DY-Conv code exists. This is the reconstruction of
``../shared/notes/peers_format.md`` §3, the only design found that gives all four of the KW
paper's parameter counts (Tables 1, 2, 4): ``K`` kernels ``W_k`` ``[C_out, C_in / g, k, k]``
and an attention GAP -> ``fc1`` (``C_in -> int(C_in / 4)``, with bias) -> ReLU -> ``fc2``
(``-> K``, with bias) -> ``softmax(z / T)``; per sample ``W(x) = sum_k pi_k(x) W_k`` (paper
Eq. 1-2). The temperature T goes 30 -> 1 over the first 10 epochs of pretraining, as in the
DY-Conv paper, and is 1 otherwise.

Execution: the per-sample kernels are assembled by one matmul and applied by
:func:`~mmkw.ops.per_sample_conv.per_sample_conv2d` ('assembled'), with the base class's batch
chunking and recomputation in backward. The alternative ``y = sum_k pi_k conv(x, W_k)`` (one
plain conv with K times the output channels, then a mix) needs no per-sample kernels but K
times the multiply-adds of the conv. Timed on a 2-core AVX-512 CPU at batch 8 on ResNet and
MobileNetV2 conv shapes (56x56 to 7x7 maps), it was 1.3-36x slower in inference on every
shape but the 512-channel 7x7 one (a tie within the noise) and not consistently faster in
training, so it is not used.
"""
import math
from typing import Tuple, Union

import torch
import torch.nn as nn
from mmengine.registry import MODELS

from .dynamic_conv import Attention, DynamicAttention, KernelBankConv2d
from .odconv import check_kernel_attention_function, kernel_mixture_attention
from .per_sample_conv import matmul2d, per_sample_conv2d


class DyConvAttention(DynamicAttention):
    """Attention of a DY-Conv layer over its K kernels: GAP -> ``fc1`` -> ReLU -> ``fc2`` ->
    ``softmax(z / T)`` (or KW's CAF, Table 10).

    Args:
        in_channels: C_in of the conv.
        kernel_num: K.
        reduction: hidden width ``max(int(C_in * reduction), 1)``; the default 1/4 gives the
            reconstruction's ``int(C_in / 4)`` (no minimum width: the KW paper's counts need
            none; 1 only guards convs of fewer than 4 input channels).
        attention_function: 'softmax' (DY-Conv) or 'caf' (see
            :func:`~mmkw.ops.odconv.kernel_mixture_attention`).

    ``forward`` maps ``[B, C_in, H, W]`` to ``([B, K], )``. No norm: a batch of one trains.
    """

    final_temperature = 1.0
    temperature_range = (1.0, math.inf)

    def __init__(self, in_channels: int, kernel_num: int = 4, reduction: float = 1 / 4,
                 attention_function: str = 'softmax') -> None:
        super().__init__()
        self.hidden_channels = max(int(in_channels * reduction), 1)
        self.attention_function = check_kernel_attention_function(
            attention_function, 'DyConvAttention')
        self.fc1 = nn.Linear(in_channels, self.hidden_channels)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(self.hidden_channels, kernel_num)
        for fc in (self.fc1, self.fc2):
            # ODConv's attention init (the notes give DY-Conv ODConv's init)
            nn.init.kaiming_normal_(fc.weight, mode='fan_out', nonlinearity='relu')
            nn.init.zeros_(fc.bias)

    def forward(self, x: torch.Tensor) -> Attention:
        hidden = self.relu(self.fc1(x.mean(dim=(2, 3))))
        return (kernel_mixture_attention(self.fc2(hidden), self.temperature,
                                         self.attention_function), )


@MODELS.register_module()
class DyConv2d(KernelBankConv2d):
    """Dynamic 2D convolution over K kernels, a drop-in replacement of ``nn.Conv2d``.

    Build it directly or through mmcv's ``build_conv_layer(dict(type='DyConv2d',
    kernel_num=4), in_channels, out_channels, kernel_size, stride=..., padding=...,
    groups=..., bias=...)``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as for
            ``nn.Conv2d`` (numeric padding; ``bias=True`` adds a static bias).
        kernel_num: K (4 in the KW paper's tables).
        reduction: attention hidden width ratio (1/4).
        attention_function: 'softmax' (DY-Conv) or 'caf' (Table 10).
        recompute_kernels: True, False or 'auto' (see :class:`DynamicConv2d`).

    Parameters: ``weight`` ``[K, C_out, C_in / groups, kh, kw]`` (each kernel kaiming-normal,
    fan_out, as ODConv's) and ``attention`` (:class:`DyConvAttention`: ``fc1``, ``fc2``).
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
                 reduction: float = 1 / 4,
                 attention_function: str = 'softmax',
                 recompute_kernels: Union[bool, str] = 'auto') -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, kernel_num, reduction, recompute_kernels)
        self.attention = DyConvAttention(in_channels, kernel_num, reduction, attention_function)
        self.reset_parameters()

    # ------------------------------------------------------------ the DynamicConv2d contract
    def effective_kernels(self, attention: Attention) -> torch.Tensor:
        """``sum_k pi_k W_k`` per sample: ``[B, C_out, C_in / g, kh, kw]``."""
        pi, = attention
        weight = self.weight.to(pi.dtype).view(self.kernel_num, -1)
        return matmul2d(pi, weight).view(pi.shape[0], *self.weight_shape)

    def convolve(self, x: torch.Tensor, attention: Attention, path: str) -> torch.Tensor:
        return per_sample_conv2d(x, self.effective_kernels(attention), self.stride,
                                 self.padding, self.dilation, self.groups)
