"""The contract every dynamic convolution of mmkw implements, and the machinery they share.

A dynamic conv computes, per sample ``b``, ``y[b] = conv(x[b], W(x[b]))``: an *attention* module
reads the input, the conv turns the attention into per-sample kernels (or into scalings of its
input and output where that is exact) and convolves. Kernel Warehouse (:mod:`.kw_conv`),
ODConv (:mod:`.odconv`), DY-Conv (:mod:`.dyconv`) and KW* differ only in those two steps, so a
method implements

- :meth:`DynamicConv2d.attend`: the attention tensors, each with the batch as first dimension;
- :meth:`DynamicConv2d.convolve`: the output of a chunk of samples by one execution path;
- :meth:`DynamicConv2d.effective_kernels`: the kernels ``[B, C_out, C_in / groups, kh, kw]``
  that the per-sample convolution is equal to (the reference the fast paths are tested
  against, and what the official releases compute);
- optionally :meth:`DynamicConv2d.execution_path`, :meth:`DynamicConv2d.held_numel` and
  :meth:`DynamicConv2d.recompute_share`;

and :meth:`DynamicConv2d.forward` does the rest once: input checks, empty batches, batch
chunking, recomputing the per-sample kernels in the backward pass instead of keeping them, and
the bias.

The attentions' temperature (KW's tau, ODConv's and DY-Conv's softmax temperature T) lives on
:class:`DynamicAttention`; :func:`set_temperature` and :class:`mmkw.engine.TemperatureHook`
drive it for every method alike.
"""
import warnings
from functools import partial
from typing import Iterator, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.utils import _pair
from torch.utils.checkpoint import (CheckpointPolicy, checkpoint,
                                    create_selective_checkpoint_contexts)

from . import per_sample_conv
from .per_sample_conv import (batch_chunks, conv_output_size, in_export_formulation,
                              in_release_formulation, output_kept)

Attention = Tuple[torch.Tensor, ...]


class DynamicAttention(nn.Module):
    """Base of the attention modules of dynamic convs: holds the temperature.

    ``temperature`` is a plain attribute (not in the state dict) that starts at the method's
    ``final_temperature``, the value for fine-tuning and inference (KW: tau = 0, ODConv and
    DY-Conv: T = 1); a temperature hook moves it during the warm-up of pretraining.
    ``temperature_enabled`` False holds it there (KW with the init strategy disabled).
    """

    final_temperature: float = 1.0
    temperature_range: Tuple[float, float] = (1.0, float('inf'))

    def __init__(self) -> None:
        super().__init__()
        self.temperature = float(self.final_temperature)
        self.temperature_enabled = True

    def set_temperature(self, temperature: float) -> None:
        low, high = self.temperature_range
        if not low <= temperature <= high:
            raise ValueError(f'{type(self).__name__}: temperature must be in [{low}, {high}], '
                             f'got {temperature}')
        self.temperature = float(temperature)


def set_temperature(model: nn.Module, temperature: float) -> int:
    """Set the temperature of every dynamic-conv attention of ``model`` whose schedule is
    enabled; returns how many took the value (0 when there are none)."""
    count = 0
    for module in model.modules():
        if isinstance(module, DynamicAttention) and module.temperature_enabled:
            module.set_temperature(temperature)
            count += 1
    return count


def get_temperature(model: nn.Module) -> Optional[float]:
    """The temperature of the first dynamic-conv attention of ``model`` (None if it has none)."""
    for module in model.modules():
        if isinstance(module, DynamicAttention):
            return module.temperature
    return None


_PRODUCTS = (torch.ops.aten.convolution.default, torch.ops.aten.mm.default)


def _keep_products(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    # A recomputing backward keeps the outputs of the products marked by keep_output() (the
    # grouped per-sample convolution, the warehouse matmul of KW's mixed-input path), which are
    # about the conv's output in size and would be costly to run again. Everything else (the
    # assembly, layout copies, unfold, the matmuls of the small-map paths) runs again in the
    # backward pass: keeping those would keep partial products per conv (100 MB for a KW
    # ResNet-18 at batch 32) to save under 1% of the step.
    if output_kept() and op in _PRODUCTS:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def convolve_recomputing_kernels(convolve, x: torch.Tensor, attention: Attention,
                                 path: str) -> torch.Tensor:
    """``convolve(x, attention, path)`` without keeping the per-sample kernels for backward.

    Per-sample kernels hold ``B x params`` numbers per conv, more than the activations of a
    plain network (a KW ResNet-18 at batch 32 would keep 1.4 GB of them), which autograd would
    keep until the backward pass reaches the conv. Selective checkpointing keeps only the
    marked products and assembles the kernels of one conv again when its gradient is due: one
    more assembly per conv and step. The attention stays outside the region, so its BatchNorm
    statistics are updated once.
    """
    def run(x, *attention):
        return convolve(x, attention, path)

    # respect_saved_tensors_hooks=False: the kept outputs bypass saved-tensor hooks, as they
    # always have (torch now asks to choose)
    return checkpoint(run, x, *attention, use_reentrant=False,
                      respect_saved_tensors_hooks=False,
                      context_fn=partial(create_selective_checkpoint_contexts, _keep_products))


class DynamicConv2d(nn.Module):
    """Base class of mmkw's dynamic 2D convolutions, drop-in replacements of ``nn.Conv2d``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as for
            ``nn.Conv2d`` (``padding`` must be numeric).
        recompute_kernels: in training, whether the per-sample kernels are assembled again in
            the backward pass instead of being kept (True, False, or 'auto': by the batch's
            kernel numbers and the cost of assembling them again, see
            :func:`~mmkw.ops.per_sample_conv.auto_recomputes`).

    Forward: ``[B, C_in, H, W]`` -> ``[B, C_out, H_out, W_out]``; a batch of 0 gives an empty
    output of the right shape.
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
                 recompute_kernels: Union[bool, str] = 'auto') -> None:
        super().__init__()
        name = type(self).__name__
        if in_channels % groups or out_channels % groups:
            raise ValueError(f'{name}: in_channels={in_channels} and out_channels='
                             f'{out_channels} must be divisible by groups={groups}')
        if isinstance(padding, str):
            raise ValueError(f'{name}: string padding is not supported, give numbers')
        if recompute_kernels not in (True, False, 'auto'):
            raise ValueError(f"{name}: recompute_kernels must be True, False or 'auto', got "
                             f'{recompute_kernels!r}')
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self._recompute_kernels = recompute_kernels
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    # ------------------------------------------------------------ what a method implements
    def attend(self, x: torch.Tensor) -> Attention:
        """The attention tensors of a batch, each ``[B, ...]``."""
        raise NotImplementedError

    def convolve(self, x: torch.Tensor, attention: Attention, path: str) -> torch.Tensor:
        """The conv's output (without bias) for a chunk of samples, by execution path
        ``path``."""
        raise NotImplementedError

    def effective_kernels(self, attention: Attention) -> torch.Tensor:
        """Per-sample kernels ``[B, C_out, C_in / groups, kh, kw]`` that the conv equals."""
        raise NotImplementedError

    def execution_path(self, x: torch.Tensor) -> str:
        """How this input is convolved (the method's path names); 'assembled' by default."""
        return 'assembled'

    def held_numel(self, x: torch.Tensor, path: str) -> int:
        """Numbers per sample the path would keep for backward (its per-sample kernels by
        default); sizes the chunks of a large batch and decides 'auto' recomputation."""
        return self.out_channels * self.in_channels // self.groups * \
            self.kernel_size[0] * self.kernel_size[1]

    def recompute_share(self, x: torch.Tensor, path: str) -> float:
        """The share of this conv's training-step multiply-adds that assembling its kernels
        again in the backward pass would add (see :func:`per_sample_conv.recompute_share`);
        'auto' keeps the kernels of a mid-sized batch where it is high. 0 by default: a method
        that does not say is taken to assemble cheaply."""
        return 0.0

    def empty_batch_parameters(self) -> Iterator[torch.Tensor]:
        """What the empty output of a batch of 0 stays connected to, so that each gets a zero
        gradient as in any other step (DDP expects a gradient for every parameter the layer
        uses): its parameters, and a method's shared ones held outside the module (KW's
        warehouse)."""
        return self.parameters()

    @property
    def recompute_kernels(self) -> Union[bool, str]:
        return self._recompute_kernels

    # ------------------------------------------------------------ shared machinery
    @property
    def weight_shape(self) -> Tuple[int, ...]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        return tuple(
            conv_output_size(size, self.kernel_size[i], self.stride[i], self.padding[i],
                             self.dilation[i]) for i, size in enumerate((height, width)))

    def output_positions(self, x: torch.Tensor) -> int:
        out_h, out_w = self.output_size(x.shape[2], x.shape[3])
        return out_h * out_w

    def check_ready(self) -> None:
        """Raise when the conv cannot run yet (KW: not bound to its warehouse)."""

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'{type(self).__name__} expects input [B, {self.in_channels}, H, '
                             f'W], got {list(x.shape)}')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing():
            # The tracer records sizes as graph values and warns at every Python decision on
            # them; the decisions here (input checks, execution path) read the channels and
            # the map size, which a traced graph fixes anyway, and none reads the batch size
            # (the export formulation: one chunk, no empty-batch shortcut).
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', torch.jit.TracerWarning)
                return self._forward(x)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_ready()
        self.check_input(x)
        batch = x.shape[0]
        if not torch.jit.is_tracing() and batch == 0:
            # The attention's norms and the chunking cannot take an empty batch. The empty
            # output stays in the graph of the input and of the layer's own parameters, so a
            # backward pass through it runs (and gives them zero gradients).
            anchor = x.sum() * 0
            for param in self.empty_batch_parameters():
                anchor = anchor + param.sum() * 0
            return x.new_zeros(0, self.out_channels, *self.output_size(*x.shape[2:])) + anchor
        attention = tuple(a.to(x.dtype) for a in self.attend(x))
        path = self.execution_path(x)
        # the whole batch at once, kernels kept: the release's way, and the export
        # formulation's (chunk bounds computed from the batch would be baked into a graph)
        release = in_release_formulation() or in_export_formulation()
        if release:
            held, chunks = 0, [(0, batch)]
        else:
            held = self.held_numel(x, path)
            chunks = batch_chunks(batch, held)
        recompute = torch.is_grad_enabled() and not release and held > 0 and (
            per_sample_conv.recomputes(self.recompute_kernels, batch * held,
                                       self.recompute_share(x, path)))
        outs: List[torch.Tensor] = []
        for start, end in chunks:
            chunk_x = x[start:end] if len(chunks) > 1 else x
            chunk_attention = tuple(a[start:end] for a in attention) if len(chunks) > 1 \
                else attention
            outs.append(convolve_recomputing_kernels(self.convolve, chunk_x, chunk_attention,
                                                     path)
                        if recompute else self.convolve(chunk_x, chunk_attention, path))
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1).to(out.dtype)
        return out

    def __prepare_scriptable__(self):
        # torch.jit.script calls this on every submodule before compiling; without it the
        # compiler fails deep inside the attention with a message that names no way out
        raise RuntimeError(scripting_unsupported(type(self).__name__))

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The definition, sample by sample: ``conv2d(x[b], effective_kernels[b])`` plus bias.
        Slow; for tests and for checking a new execution path."""
        self.check_ready()
        self.check_input(x)
        kernels = self.effective_kernels(tuple(a.to(x.dtype) for a in self.attend(x)))
        outs = [F.conv2d(x[b:b + 1], kernels[b], self.bias, self.stride, self.padding,
                         self.dilation, self.groups) for b in range(x.shape[0])]
        return torch.cat(outs)

    def extra_repr(self) -> str:
        s = (f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, '
             f'stride={self.stride}, padding={self.padding}')
        if self.groups != 1:
            s += f', groups={self.groups}'
        if self.dilation != (1, 1):
            s += f', dilation={self.dilation}'
        if self.bias is None:
            s += ', bias=False'
        return s


def scripting_unsupported(layer: str) -> str:
    """The error for ``torch.jit.script`` of a dynamic conv, with the ways that work."""
    return (f'{layer} cannot be compiled by torch.jit.script (it uses Python features '
            'TorchScript lacks). Use torch.jit.trace (the traced graph takes any batch size), '
            'torch.export.export, or ONNX (tools/deployment/pytorch2onnx.py; see '
            'docs/deployment.md)')


def channel_scales_to_kernel(kernels: torch.Tensor, in_scale: Optional[torch.Tensor],
                             out_scale: Optional[torch.Tensor], groups: int) -> torch.Tensor:
    """Fold per-sample input-channel scales ``[B, C_in]`` and output-channel scales
    ``[B, C_out]`` into per-sample kernels ``[B, C_out, C_in / groups, kh, kw]`` (for grouped
    convs, output channel ``o`` meets input channels of its group only)."""
    batch, out_channels, group_in = kernels.shape[:3]
    if in_scale is not None:
        # input channel j of the group of output o is channel (o // (C_out / g)) * C_in/g + j
        per_group = in_scale.view(batch, groups, 1, group_in)
        per_out = per_group.expand(batch, groups, out_channels // groups, group_in)
        kernels = kernels * per_out.reshape(batch, out_channels, group_in, 1, 1)
    if out_scale is not None:
        kernels = kernels * out_scale.view(batch, out_channels, 1, 1, 1)
    return kernels


class KernelBankConv2d(DynamicConv2d):
    """Base of the dynamic convs that hold ``K`` full kernels of their own and mix them per
    sample (ODConv, DY-Conv): the kernel bank ``weight`` ``[K, C_out, C_in / groups, kh, kw]``
    with the releases' init (every kernel kaiming-normal, fan_out, ReLU gain; bias 0), argument
    checks, and the refusal of a checkpoint of another K or architecture.

    A subclass calls ``super().__init__``, builds its ``attention`` (which has an
    ``attention_function``) and then calls :meth:`reset_parameters`.

    Args:
        kernel_num: K.
        reduction: the attention's hidden width ratio.
        Others as :class:`DynamicConv2d`.
    """

    def __init__(self, in_channels: int, out_channels: int,
                 kernel_size: Union[int, Tuple[int, int]],
                 stride: Union[int, Tuple[int, int]] = 1,
                 padding: Union[int, Tuple[int, int]] = 0,
                 dilation: Union[int, Tuple[int, int]] = 1,
                 groups: int = 1,
                 bias: bool = False,
                 kernel_num: int = 4,
                 reduction: float = 1 / 16,
                 recompute_kernels: Union[bool, str] = 'auto') -> None:
        name = type(self).__name__
        if not (isinstance(kernel_num, int) and kernel_num >= 1):
            raise ValueError(f'{name}: kernel_num must be a positive int, got {kernel_num!r}')
        if not reduction > 0:
            raise ValueError(f'{name}: reduction must be positive, got {reduction!r}')
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, recompute_kernels)
        self.kernel_num = kernel_num
        self.reduction = reduction
        self.weight = nn.Parameter(torch.empty(kernel_num, *self.weight_shape))

    def reset_parameters(self) -> None:
        """Every kernel kaiming-normal (fan_out, ReLU gain), as the releases; bias 0."""
        for kernel in self.weight.data:
            nn.init.kaiming_normal_(kernel, mode='fan_out', nonlinearity='relu')
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    @property
    def attention_function(self) -> str:
        return self.attention.attention_function

    def attend(self, x: torch.Tensor) -> Attention:
        return self.attention(x)

    def recompute_share(self, x: torch.Tensor, path: str) -> float:
        """Assembling mixes K kernels, about K multiply-adds per kernel number; the conv uses
        each number once per output position."""
        return per_sample_conv.recompute_share(self.kernel_num, self.output_positions(x))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # mmengine's non-strict loading only warns on shape mismatches: a checkpoint of another
        # K, reduction or layer must not half-load silently.
        for name, tensor in list(self.named_parameters()) + list(self.named_buffers()):
            key = prefix + name
            if key in state_dict and state_dict[key].shape != tensor.shape:
                raise ValueError(
                    f'{type(self).__name__} {prefix[:-1]!r}: checkpoint {key!r} has shape '
                    f'{list(state_dict[key].shape)} but this layer ({self.in_channels} -> '
                    f'{self.out_channels}, kernel {self.kernel_size}, groups {self.groups}, '
                    f'K={self.kernel_num}, reduction {self.reduction:g}) needs '
                    f'{list(tensor.shape)}: the checkpoint comes from another kernel_num, '
                    'reduction or architecture')
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        s = super().extra_repr() + f', kernel_num={self.kernel_num}'
        if self.attention_function != 'softmax':
            s += f', attention_function={self.attention_function!r}'
        return s
