"""The Kernel Warehouse convolution (paper §3, Eq. 2-4, Algorithm 1 part B).

A :class:`KWConv2d` partitions its kernel into ``m`` cells (Eq. 2) and assembles each one,
per sample, as a mixture of the ``n`` cells of a warehouse shared with the other convs of its
stage (Eq. 3). The mixture weights come from :class:`KWAttention`, a squeeze-excitation style
module ending in the contrasting-driven attention function (Eq. 4).

Shapes: input ``[B, C_in, H, W]``; attention ``[B, m, n]``; warehouse ``[n, c_out, c_in, 1, 1]``;
assembled kernels ``[B, C_out, C_in / groups, kh, kw]``.
"""
import warnings
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
from mmengine.registry import MODELS

from .attention_options import (CAF_EPS, apply_attention_function,  # noqa: F401 (re-export)
                                check_attention_function, init_beta, one_to_one_beta)
from .dynamic_conv import (Attention, DynamicAttention, DynamicConv2d,  # noqa: F401 (re-export)
                           channel_scales_to_kernel, convolve_recomputing_kernels)
from .norm_guard import check_norm_batch
from .per_sample_conv import (choose_path, matmul2d, mixed_input_conv2d, mixture_conv2d,
                              per_sample_conv2d, prefers_onednn, recompute_share)
from .warehouse import WarehouseManager, WarehouseSpec


class KWAttention(DynamicAttention):
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
        extra_heads: KW* (Table 17, a reconstruction of ``peers_format.md`` §4):
            ``(C_in, C_out, kh * kw)`` adds ODConv-style heads on the trunk, ``channel_fc``,
            ``filter_fc`` and ``spatial_fc`` (linear with bias, sigmoid), whose outputs scale the
            conv's input channels, output channels and kernel positions
            (:meth:`forward_with_heads`). tau does not act on them.

    ``forward`` maps ``[B, C_in, H, W]`` to attentions ``[B, m, n]``. ``temperature`` (tau) is
    a plain attribute, 0 unless a hook sets it, and ``beta`` a non-persistent buffer: neither is
    part of the state dict. ``init_strategy`` False (the strategy disabled) holds tau at 0.
    """

    final_temperature = 0.0
    temperature_range = (0.0, 1.0)

    def __init__(self, in_channels: int, num_mixtures: int, num_cells: int, start: int,
                 cell_num_ratio: float, reduction: float = 1 / 16, norm: str = 'BN',
                 nonlocal_basis_ratio: float = 1.0, attention_function: str = 'caf',
                 share_cells: bool = True,
                 extra_heads: Optional[Tuple[int, int, int]] = None) -> None:
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
        # what errors call it; its conv names it more precisely when it binds
        self.layer_name = f'KW attention ({in_channels} channels, m={num_mixtures}, n={num_cells})'
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
        self.extra_heads = extra_heads is not None
        if self.extra_heads:
            in_channels_, out_channels_, positions = extra_heads
            self.channel_fc = nn.Linear(hidden, in_channels_)
            self.filter_fc = nn.Linear(hidden, out_channels_)
            self.spatial_fc = nn.Linear(hidden, positions)
        self.register_buffer('beta', torch.zeros(num_mixtures, num_cells + 1), persistent=False)
        self.reset_parameters()

    @property
    def init_strategy(self) -> bool:
        """Whether the init strategy (beta mixed in by tau) is enabled."""
        return self.temperature_enabled

    @init_strategy.setter
    def init_strategy(self, enabled: bool) -> None:
        self.temperature_enabled = bool(enabled)

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

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """GAP -> fc1 -> norm -> ReLU: ``[B, hidden]``."""
        pooled = x.flatten(2).mean(dim=2)
        hidden = self.fc1(pooled)
        check_norm_batch(self.norm1, hidden, self.layer_name)
        return self.act1(self.norm1(hidden))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``z`` of shape ``[B, m, n + 1]`` (last column: the zero cell); ``[B, m, 2]``
        (own cell, zero cell) when ``share_cells`` is False."""
        return self._logits(self.trunk(x))

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
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
        return self._attention(self._logits(self.trunk(x)))

    def forward_with_heads(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """KW*: the cell attentions ``[B, m, n]`` and the sigmoid scales of the input channels
        ``[B, C_in]``, output channels ``[B, C_out]`` and kernel positions ``[B, kh * kw]``."""
        hidden = self.trunk(x)
        return (self._attention(self._logits(hidden)), torch.sigmoid(self.channel_fc(hidden)),
                torch.sigmoid(self.filter_fc(hidden)), torch.sigmoid(self.spatial_fc(hidden)))

    def _attention(self, z: torch.Tensor) -> torch.Tensor:
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


@MODELS.register_module()
class KWConv2d(DynamicConv2d):
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

    Execution paths (:func:`~mmkw.ops.per_sample_conv.choose_path`): 'assembled' (per-sample
    kernels, then a per-sample conv), 'mixture' (kernels kept in cell order) and 'mixed_input'
    (the attention mixes the input, no kernels); the recompute policy is the manager's.
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
        if not isinstance(warehouse_manager, WarehouseManager):
            raise TypeError(f'KWConv2d needs a WarehouseManager, got {type(warehouse_manager)}')
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias)
        self.warehouse_name = warehouse_name
        # Held outside the module tree: the manager belongs to the backbone, not to each conv.
        object.__setattr__(self, 'warehouse_manager', warehouse_manager)
        self.warehouse_index = warehouse_manager.reserve(warehouse_name, self.weight_shape,
                                                         budget)
        self.attention: Optional[KWAttention] = None

    @property
    def recompute_kernels(self) -> Union[bool, str]:
        return self.warehouse_manager.recompute_kernels

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
        extra_heads = (self.in_channels, self.out_channels,
                       self.kernel_size[0] * self.kernel_size[1]) \
            if manager.attention_extra_heads else None
        self.attention = KWAttention(self.in_channels, num_mixtures, spec.num_cells, start, b,
                                     manager.reduction, manager.attention_norm,
                                     manager.nonlocal_basis_ratio, manager.attention_function,
                                     manager.share_cells, extra_heads)
        beta, end = init_beta(manager.attention_init, num_mixtures, spec.num_cells, start, b,
                              where=f'warehouse {spec.name!r}: ')
        self.attention.beta.copy_(beta)
        self.attention.init_strategy = manager.attention_init is not None
        self.attention.layer_name = (
            f'KW attention of a {self.in_channels}->{self.out_channels} '
            f'{self.kernel_size[0]}x{self.kernel_size[1]} conv in warehouse {spec.name!r}')
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

    # ------------------------------------------------------------ the DynamicConv2d contract
    def check_ready(self) -> None:
        if self.attention is None:
            raise RuntimeError(
                f'KWConv2d in warehouse {self.warehouse_name!r} is not bound to its warehouse: '
                'the module owning the WarehouseManager must call manager.build(owner) after '
                'constructing its convs, and the conv must be used inside that owner')

    def attend(self, x: torch.Tensor) -> Attention:
        if self.attention.extra_heads:
            return self.attention.forward_with_heads(x)
        return (self.attention(x), )

    def effective_kernels(self, attention: Attention) -> torch.Tensor:
        if not self.attention.extra_heads:
            return self.assemble(attention[0])
        alpha, in_scale, out_scale, position_scale = attention
        return channel_scales_to_kernel(self._scaled_kernels(alpha, position_scale), in_scale,
                                        out_scale, self.groups)

    def _scaled_kernels(self, alpha: torch.Tensor, position_scale: torch.Tensor) -> torch.Tensor:
        kernels = self.assemble(alpha)
        return kernels * position_scale.view(kernels.shape[0], 1, 1, *self.kernel_size)

    def execution_path(self, x: torch.Tensor) -> str:
        """'mixed_input', 'mixture' or 'assembled': see :func:`choose_path` (KW*: always
        'assembled', its kernel-position scales need the assembled kernels)."""
        if self.attention.extra_heads:
            return 'assembled'
        return choose_path(x.shape[0], self.output_positions(x), self.attention.num_cells,
                           self.mixture_grid, self.cell_shape, self.groups, prefers_onednn(x))

    def empty_batch_parameters(self):
        """The conv's parameters and its warehouse, which the manager holds."""
        yield from self.parameters()
        yield self.warehouse_manager.cells(self.warehouse_index)

    def held_numel(self, x: torch.Tensor, path: str) -> int:
        if path == 'mixed_input':
            # the mixed input z, with its copies and gradient (about 4 of them)
            return 4 * self.attention.num_cells * self.cell_shape[1] * self.mixture_grid[1] * \
                self.output_positions(x)
        return super().held_numel(x, path)

    def recompute_share(self, x: torch.Tensor, path: str) -> float:
        """Per kernel number, assembling mixes the n cells and the conv uses it at each output
        position; mixing the input costs ``S * G_in`` per output of the warehouse matmul's
        ``c_out`` (see :func:`choose_path`)."""
        if path == 'mixed_input':
            spatial, _, groups_in = self.mixture_grid
            return recompute_share(spatial * groups_in, self.cell_shape[0])
        return recompute_share(self.attention.num_cells, self.output_positions(x))

    def convolve(self, x: torch.Tensor, attention: Attention, path: str) -> torch.Tensor:
        """Eq. 3 and the per-sample convolution, by the given execution path."""
        if self.attention.extra_heads:
            # KW*: channel scales act on the activations (exact), position scales on kernels
            alpha, in_scale, out_scale, position_scale = attention
            out = per_sample_conv2d(x * in_scale[:, :, None, None],
                                    self._scaled_kernels(alpha, position_scale), self.stride,
                                    self.padding, self.dilation, self.groups)
            return out * out_scale[:, :, None, None]
        alpha, = attention
        if path == 'mixed_input':
            cells = self.warehouse_manager.cells(self.warehouse_index).to(x.dtype)
            return mixed_input_conv2d(x, alpha, cells, self.mixture_grid, self.kernel_size,
                                      self.stride, self.padding, self.dilation)
        if path == 'mixture':
            mixed = self.mix_cells(alpha).flatten(-3)  # drop the 1x1 cell kernel
            return mixture_conv2d(x, mixed, self.kernel_size, self.stride, self.padding,
                                  self.dilation)
        return per_sample_conv2d(x, self.assemble(alpha), self.stride, self.padding,
                                 self.dilation, self.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + f', warehouse={self.warehouse_name!r}'
