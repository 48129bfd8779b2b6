"""The Kernel Warehouse convolution (paper §3, Eq. 2-4, Algorithm 1 part B).

A :class:`KWConv2d` partitions its kernel into ``m`` cells (Eq. 2) and assembles each one,
per sample, as a mixture of the ``n`` cells of a warehouse shared with the other convs of its
stage (Eq. 3). The mixture weights come from :class:`KWAttention`, a squeeze-excitation style
module ending in the contrasting-driven attention function (Eq. 4).

Shapes: input ``[B, C_in, H, W]``; attention ``[B, m, n]``; warehouse ``[n, c_out, c_in, 1, 1]``;
assembled kernels ``[B, C_out, C_in / groups, kh, kw]``.
"""
import warnings
from functools import partial
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
from mmengine.registry import MODELS
from torch.utils.checkpoint import (CheckpointPolicy, checkpoint,
                                    create_selective_checkpoint_contexts)
from torch.nn.modules.utils import _pair

from .attention_options import (CAF_EPS, apply_attention_function,  # noqa: F401 (re-export)
                                check_attention_function, init_beta, one_to_one_beta)
from . import per_sample_conv
from .per_sample_conv import (batch_chunks, choose_path, conv_output_size,
                              in_release_formulation, matmul2d, mixed_input_conv2d,
                              mixture_conv2d, output_kept, per_sample_conv2d, prefers_onednn)
from .warehouse import WarehouseManager, WarehouseSpec


class KWAttention(nn.Module):
    """Attention of one KW conv: GAP -> fc1 -> norm -> ReLU -> fc2 -> CAF (Eq. 4).

    Args:
        in_channels: C_in of the conv.
        num_mixtures: m, the cells of the conv's kernel.
        num_cells: n, the cells of its warehouse.
        start: index of the first warehouse cell the conv owns.
        cell_num_ratio: the budget b of the warehouse.
        reduction: hidden width as a fraction of ``in_channels`` (at least 16).
        norm: 'BN' or 'LN'.
        nonlocal_basis_ratio: < 1 computes the logits of the cells the conv does not own from
            a basis of ``max(int(N * ratio), 16)`` logits through ``fc3``.
        attention_function: 'caf' (Eq. 4, the default), 'softmax', 'sigmoid' or 'relu_norm'
            (the alternatives of Table 8); see :mod:`mmkw.ops.attention_options`.
        share_cells: False removes warehouse sharing altogether (Table 6, "without sharing"):
            mixture ``i`` only uses its own cell ``start + i`` (needs b = 1), so ``fc2`` yields
            two logits per mixture (its cell and the zero cell) and the attentions ``[B, m, n]``
            are zero off that diagonal.

    ``forward`` maps ``[B, C_in, H, W]`` to attentions ``[B, m, n]``. ``temperature`` (tau) is
    a plain attribute, 0 unless a hook sets it, and ``beta`` a non-persistent buffer: neither is
    part of the state dict.
    """

    def __init__(self, in_channels: int, num_mixtures: int, num_cells: int, start: int,
                 cell_num_ratio: float, reduction: float = 1 / 16, norm: str = 'BN',
                 nonlocal_basis_ratio: float = 1.0, attention_function: str = 'caf',
                 share_cells: bool = True) -> None:
        super().__init__()
        hidden = max(int(in_channels * reduction), 16)
        self.attention_function = check_attention_function(attention_function)
        self.share_cells = share_cells
        if not share_cells and (nonlocal_basis_ratio < 1 or cell_num_ratio != 1
                                or start + num_mixtures > num_cells):
            raise ValueError('KWAttention(share_cells=False) gives each mixture its own cell: it '
                             f'needs b = 1 (got {cell_num_ratio}), no nonlocal basis (got ratio '
                             f'{nonlocal_basis_ratio}) and cells {start}..{start + num_mixtures} '
                             f'within n={num_cells}')
        self.num_mixtures = num_mixtures
        self.num_cells = num_cells
        self.start = start
        self.fc1 = nn.Linear(in_channels, hidden, bias=norm != 'BN')
        self.norm1 = nn.BatchNorm1d(hidden) if norm == 'BN' else nn.LayerNorm(hidden)
        self.act1 = nn.ReLU(inplace=True)
        self.use_basis = nonlocal_basis_ratio < 1
        if self.use_basis:
            self.num_local = int(cell_num_ratio * num_mixtures)
            self.num_nonlocal = num_cells - self.num_local
            self.num_basis = max(int(self.num_nonlocal * nonlocal_basis_ratio), 16)
            self.fc2 = nn.Linear(hidden, (self.num_local + self.num_basis + 1) * num_mixtures,
                                 bias=False)
            with warnings.catch_warnings():
                # a conv that owns the whole warehouse has no nonlocal cells: fc3 is empty
                warnings.filterwarnings('ignore', 'Initializing zero-element tensors')
                self.fc3 = nn.Linear(self.num_basis, self.num_nonlocal, bias=False)
            self.basis_bias = nn.Parameter(torch.zeros(num_mixtures * (num_cells + 1)))
        elif not share_cells:
            self.fc2 = nn.Linear(hidden, num_mixtures * 2)  # own cell and zero cell
        else:
            self.fc2 = nn.Linear(hidden, num_mixtures * (num_cells + 1))
        self.register_buffer('beta', torch.zeros(num_mixtures, num_cells + 1), persistent=False)
        self.temperature = 0.0
        self.init_strategy = True
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.weight.numel():
                nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.BatchNorm1d, nn.LayerNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if self.use_basis:
            nn.init.zeros_(self.basis_bias)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``z`` of shape ``[B, m, n + 1]`` (last column: the zero cell); ``[B, m, 2]``
        (own cell, zero cell) when ``share_cells`` is False."""
        pooled = x.flatten(2).mean(dim=2)
        hidden = self.act1(self.norm1(self.fc1(pooled)))
        z = self.fc2(hidden)
        if not self.share_cells:
            return z.view(-1, self.num_mixtures, 2)
        if not self.use_basis:
            return z.view(-1, self.num_mixtures, self.num_cells + 1)
        z = z.view(-1, self.num_local + self.num_basis + 1)
        local, basis, zero = z.split([self.num_local, self.num_basis, 1], dim=1)
        nonlocal_ = self.fc3(basis)
        z = torch.cat([nonlocal_[:, :self.start], local, nonlocal_[:, self.start:], zero], dim=1)
        return (z.view(-1, self.num_mixtures * (self.num_cells + 1)) + self.basis_bias).view(
            -1, self.num_mixtures, self.num_cells + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.logits(x)
        if self.attention_function == 'caf':
            alpha = z / (z.abs().sum(dim=2, keepdim=True) + CAF_EPS)
        else:  # the ablations of Table 8; the zero-cell column is dropped below in all cases
            alpha = apply_attention_function(z, self.attention_function)
        if not self.share_cells:
            alpha = self._own_cells(alpha)
        tau = self.temperature
        if tau != 0:
            alpha = (1 - tau) * alpha + tau * self.beta.to(alpha.dtype)
        return alpha[:, :, :-1]

    def _own_cells(self, alpha: torch.Tensor) -> torch.Tensor:
        """``[B, m, n + 1]`` attentions from ``[B, m, 2]`` ones over (own cell, zero cell)."""
        full = alpha.new_zeros(alpha.shape[0], self.num_mixtures, self.num_cells + 1)
        rows = torch.arange(self.num_mixtures, device=alpha.device)
        full[:, rows, self.start + rows] = alpha[:, :, 0]
        full[:, :, -1] = alpha[:, :, 1]
        return full

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Attention sizes follow the warehouse size and the conv's cell count; a mismatch means
        # the checkpoint has another budget or architecture, which must not half-load.
        persistent = dict(self.named_parameters())
        persistent.update((k, v) for k, v in self.named_buffers() if k != 'beta')
        for name, tensor in persistent.items():
            key = prefix + name
            if key in state_dict and state_dict[key].shape != tensor.shape:
                raise ValueError(
                    f'KW attention {prefix[:-1]!r}: checkpoint {key!r} has shape '
                    f'{list(state_dict[key].shape)} but this layer (m={self.num_mixtures}, '
                    f'n={self.num_cells}) needs {list(tensor.shape)}: the checkpoint comes from '
                    'another budget or architecture')
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


def _keep_per_sample_conv(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    # A recomputing backward keeps the outputs of the grouped per-sample convolution and of the
    # warehouse matmul of the mixed-input path, which are about the conv's output in size and
    # would be costly to run again. Everything else (the assembly, the layout copy, unfold,
    # the input mixing and the matmuls of the other small-map paths) runs again in the
    # backward pass: keeping those matmuls' outputs would keep S partial products per conv in
    # the mixture path (100 MB for a KW ResNet-18 at batch 32) to save under 1% of the step.
    if output_kept() and op in _PRODUCTS:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


_PRODUCTS = (torch.ops.aten.convolution.default, torch.ops.aten.mm.default)


def convolve_recomputing_kernels(convolve, x: torch.Tensor, attention: torch.Tensor,
                                 path: str) -> torch.Tensor:
    """``convolve(x, attention, path)`` without keeping the assembled kernels for backward.

    The per-sample kernels hold ``B x params`` numbers per conv, more than the activations
    of a plain network (a KW ResNet-18 at batch 32 would keep 1.4 GB of them); autograd would
    keep them until the backward pass reaches the conv. Selective checkpointing keeps only the
    convolution outputs and assembles the kernels of one conv again when its gradient is due:
    one more assembly matmul per conv and step. The mixed-input path likewise mixes its input
    again. The attention stays outside the region, so its BatchNorm statistics are updated
    once.
    """
    # respect_saved_tensors_hooks=False: the kept conv outputs bypass saved-tensor hooks, as
    # they always have (torch now asks to choose)
    return checkpoint(convolve, x, attention, path, use_reentrant=False,
                      respect_saved_tensors_hooks=False,
                      context_fn=partial(create_selective_checkpoint_contexts,
                                         _keep_per_sample_conv))


@MODELS.register_module()
class KWConv2d(nn.Module):
    """Kernel Warehouse 2D convolution, a drop-in replacement of ``nn.Conv2d``.

    Build it directly or through mmcv's ``build_conv_layer`` with
    ``conv_cfg=dict(type='KWConv2d', warehouse_manager=manager, warehouse_name='stage1')``.
    The conv reserves a place in its warehouse at construction; it can run once the owner of
    the manager has called ``manager.build(owner)``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as for
            ``nn.Conv2d`` (``padding`` must be numeric; grouped and depthwise convs supported).
        warehouse_manager: the :class:`WarehouseManager` that owns the warehouse.
        warehouse_name: the warehouse shared with the other convs of its (reassigned) stage.
        budget: optional budget for this warehouse if it differs from the manager's default.
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
                 warehouse_manager: WarehouseManager,
                 warehouse_name: str,
                 budget=None) -> None:
        super().__init__()
        if not isinstance(warehouse_manager, WarehouseManager):
            raise TypeError(f'KWConv2d needs a WarehouseManager, got {type(warehouse_manager)}')
        if in_channels % groups or out_channels % groups:
            raise ValueError(f'KWConv2d: in_channels={in_channels} and out_channels='
                             f'{out_channels} must be divisible by groups={groups}')
        if isinstance(padding, str):
            raise ValueError('KWConv2d: string padding is not supported, give numbers')
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.warehouse_name = warehouse_name
        # Held outside the module tree: the manager belongs to the backbone, not to each conv.
        object.__setattr__(self, 'warehouse_manager', warehouse_manager)
        self.warehouse_index = warehouse_manager.reserve(
            warehouse_name, (out_channels, in_channels // groups, *self.kernel_size), budget)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.attention: Optional[KWAttention] = None

    @property
    def weight_shape(self) -> Tuple[int, ...]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def bind(self, spec: WarehouseSpec, start: int, manager: WarehouseManager) -> int:
        """Attach to the built warehouse: create the attention and beta; return the next
        free cell index."""
        cell_shape = spec.cell_shape
        self.cell_shape = cell_shape
        # groups of the kernel along (space, out, in), in the release's mixture order
        self.mixture_grid = (
            (self.kernel_size[0] // cell_shape[2]) * (self.kernel_size[1] // cell_shape[3]),
            self.out_channels // cell_shape[0],
            self.in_channels // self.groups // cell_shape[1],
        )
        num_mixtures = self.mixture_grid[0] * self.mixture_grid[1] * self.mixture_grid[2]
        b = spec.budget.cell_num_ratio
        self.attention = KWAttention(self.in_channels, num_mixtures, spec.num_cells, start, b,
                                     manager.reduction, manager.attention_norm,
                                     manager.nonlocal_basis_ratio, manager.attention_function,
                                     manager.share_cells)
        beta, end = init_beta(manager.attention_init, num_mixtures, spec.num_cells, start, b,
                              where=f'warehouse {spec.name!r}: ')
        self.attention.beta.copy_(beta)
        self.attention.init_strategy = manager.attention_init is not None
        return end

    def mix_cells(self, attention: torch.Tensor) -> torch.Tensor:
        """Eq. 3 for every cell of the kernel: ``[B, S, G_out, G_in, c_out, c_in, ckh, ckw]``
        from attentions ``[B, m, n]``, in the release's mixture order
        ``i = (s * G_out + o) * G_in + c``."""
        cells = self.warehouse_manager.cells(self.warehouse_index)
        num_cells = cells.shape[0]
        mixed = matmul2d(attention.reshape(-1, num_cells),
                         cells.reshape(num_cells, -1).to(attention.dtype))
        return mixed.view(attention.shape[0], *self.mixture_grid, *self.cell_shape)

    def assemble(self, attention: torch.Tensor) -> torch.Tensor:
        """Per-sample kernels ``[B, C_out, C_in / groups, kh, kw]`` from attentions
        ``[B, m, n]`` (Eq. 3 and the inverse of the partition, Eq. 2)."""
        mixed = self.mix_cells(attention)
        # cell (s, o, c) holds W[o * c_out + a, c * c_in + b, s]
        weight = mixed.permute(0, 2, 4, 3, 5, 1, 6, 7)
        return weight.reshape(attention.shape[0], *self.weight_shape)

    def _output_positions(self, x: torch.Tensor) -> int:
        positions = 1
        for i in range(2):
            positions *= conv_output_size(x.shape[2 + i], self.kernel_size[i], self.stride[i],
                                          self.padding[i], self.dilation[i])
        return positions

    def execution_path(self, x: torch.Tensor) -> str:
        """'mixed_input', 'mixture' or 'assembled': see :func:`choose_path`."""
        return choose_path(x.shape[0], self._output_positions(x), self.attention.num_cells,
                           self.mixture_grid, self.cell_shape, self.groups, prefers_onednn(x))

    def _convolve(self, x: torch.Tensor, attention: torch.Tensor, path: str) -> torch.Tensor:
        """Eq. 3 and the per-sample convolution, by the given execution path."""
        if path == 'mixed_input':
            cells = self.warehouse_manager.cells(self.warehouse_index).to(x.dtype)
            return mixed_input_conv2d(x, attention, cells, self.mixture_grid, self.kernel_size,
                                      self.stride, self.padding, self.dilation)
        if path == 'mixture':
            mixed = self.mix_cells(attention).flatten(-3)  # drop the 1x1 cell kernel
            return mixture_conv2d(x, mixed, self.kernel_size, self.stride, self.padding,
                                  self.dilation)
        return per_sample_conv2d(x, self.assemble(attention), self.stride, self.padding,
                                 self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attention is None:
            raise RuntimeError(
                f'KWConv2d in warehouse {self.warehouse_name!r} is not bound to its warehouse: '
                'the module owning the WarehouseManager must call manager.build(owner) after '
                'constructing its convs, and the conv must be used inside that owner')
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'KWConv2d expects input [B, {self.in_channels}, H, W], got '
                             f'{list(x.shape)}')
        attention = self.attention(x).to(x.dtype)
        batch = x.shape[0]
        path = self.execution_path(x)
        # Numbers per sample that the conv would keep for its backward pass: the assembled
        # kernels, or on the mixed-input path the mixed input z. A large batch runs a chunk of
        # samples at a time, so the peak memory holds one chunk's kernels (not B x params
        # numbers per conv), or one chunk's z with its copies and gradient (about 4 of them).
        release = in_release_formulation()  # the whole batch at once, kernels kept
        if release:
            held, chunks = 0, [(0, batch)]
        elif path == 'mixed_input':
            groups_out = self.mixture_grid[1]
            held = self.attention.num_cells * self.cell_shape[1] * groups_out * \
                self._output_positions(x)
            chunks = batch_chunks(batch, 4 * held)
        else:
            held = self.out_channels * self.in_channels // self.groups * \
                self.kernel_size[0] * self.kernel_size[1]
            chunks = batch_chunks(batch, held)
        # In training they are computed again in the backward pass rather than kept.
        policy = self.warehouse_manager.recompute_kernels
        recompute = torch.is_grad_enabled() and not release and (
            policy is True or
            (policy == 'auto' and batch * held > per_sample_conv.RECOMPUTE_MIN_NUMEL))
        outs = []
        for start, end in chunks:
            chunk = (x[start:end], attention[start:end], path)
            outs.append(convolve_recomputing_kernels(self._convolve, *chunk)
                        if recompute else self._convolve(*chunk))
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1).to(out.dtype)
        return out

    def extra_repr(self) -> str:
        s = (f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, '
             f'stride={self.stride}, padding={self.padding}')
        if self.groups != 1:
            s += f', groups={self.groups}'
        if self.dilation != (1, 1):
            s += f', dilation={self.dilation}'
        if self.bias is None:
            s += ', bias=False'
        return s + f', warehouse={self.warehouse_name!r}'


def set_temperature(model: nn.Module, temperature: float) -> int:
    """Set tau of every KW attention in ``model`` whose init strategy is enabled.

    Returns how many attentions took the value (0 when the strategy is disabled everywhere).
    """
    if not 0 <= temperature <= 1:
        raise ValueError(f'temperature must be in [0, 1], got {temperature}')
    count = 0
    for module in model.modules():
        if isinstance(module, KWAttention) and module.init_strategy:
            module.temperature = float(temperature)
            count += 1
    return count


def get_temperature(model: nn.Module) -> Optional[float]:
    """tau of the first KW attention of ``model`` (None if it has none)."""
    for module in model.modules():
        if isinstance(module, KWAttention):
            return module.temperature
    return None
