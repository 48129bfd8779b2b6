"""The Kernel Warehouse linear layer for token inputs (paper §3 and §4.3, Table 11).

The release's ``KWLinear`` is a KW 1-D convolution of kernel 1 over the tokens: its attention
averages *all* tokens of a sample (a class token included), so every sample gets one assembled
weight matrix, and ``bias=True`` adds a plain bias. :class:`KWLinear` computes exactly that on
``[B, N, C]`` tokens without the transposes into convolution layout, and stores its cells as
``[c_out, c_in, 1, 1]``, the cells of a 1x1 :class:`~mmkw.ops.KWConv2d`. So one
:class:`~mmkw.ops.WarehouseManager` holds linear and 1x1 conv cells alike (a KWLinear and a
1x1 KWConv2d can share a warehouse), budgets, the zero cell, the init strategy and the nonlocal
basis work unchanged, and the state dict has the KW convs' names:
``<layer>.attention.{fc1,norm1,fc2,fc3,basis_bias}``, ``<layer>.bias`` and the manager's
``warehouse_manager.weights.{w}``.

Shapes: tokens ``[B, N, C_in]`` (any ``[B, *, C_in]``; ``[B, C_in]`` is one token); attention
``[B, m, n]`` with ``m = (C_out / c_out) * (C_in / c_in)`` mixtures in the release's order
``i = o * G_in + c``; per-sample weight ``[B, C_out, C_in]``.

Two exact execution paths (:meth:`KWLinear.execution_path`):

- ``'assembled'``: one matmul of the attentions with the warehouse assembles the per-sample
  weights (Eq. 3), and one batched matmul applies them, ``y[b] = x[b] W[b]^T``;
- ``'mixed_tokens'``: the attentions mix the tokens and one matmul with the whole warehouse
  applies them (the KW conv's mixed-input path), chosen when that takes fewer multiply-adds:
  with few tokens (a pooled feature) and several input-channel groups, never for ViT blocks.
"""
from functools import partial
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
from mmengine.registry import MODELS
from torch.utils.checkpoint import (CheckpointPolicy, checkpoint,
                                    create_selective_checkpoint_contexts)

from . import per_sample_conv
from .attention_options import init_beta
from .kw_conv import KWAttention
from .per_sample_conv import (batch_chunks, in_release_formulation, keep_output, matmul2d,
                              output_kept, recompute_share)
from .warehouse import WarehouseManager, WarehouseSpec

# Mixing the tokens is chosen when it takes at most this many times the multiply-adds of
# assembling weights and applying them. 1: only when cheaper by count (not tuned on timings;
# in DeiT blocks mixing takes 5 to 50 times more, so the choice never arises there).
MIXED_TOKENS_MAX_COST_RATIO = 1.0

_KEPT_PRODUCTS = (torch.ops.aten.bmm.default, torch.ops.aten.mm.default,
                  torch.ops.aten.convolution.default)


def _keep_marked_products(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    # A recomputing backward keeps the product marked by keep_output() (the per-sample batched
    # matmul or the warehouse matmul of the mixed-token path), whose output is the layer's
    # output in size and would cost a second product to run again; the assembly of the
    # per-sample weights (B x params numbers) runs again instead of being kept.
    if output_kept() and op in _KEPT_PRODUCTS:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


@MODELS.register_module()
class KWLinear(nn.Module):
    """Kernel Warehouse linear layer, a drop-in replacement of ``nn.Linear`` on token inputs.

    The layer reserves a place in its warehouse at construction (weight ``[out, in]`` as a 1x1
    kernel ``[out, in, 1, 1]``); it can run once the owner of the manager has called
    ``manager.build(owner)``, which binds it like a KW conv.

    Args:
        in_features: C_in.
        out_features: C_out.
        bias: a plain learnable bias (the release's ``bias=True``), zero-initialised.
        warehouse_manager: the :class:`~mmkw.ops.WarehouseManager` that owns the warehouse.
        warehouse_name: the warehouse it shares with other KW layers (linear layers or 1x1
            KW convs; cells are ``[c_out, c_in, 1, 1]`` from the gcds of their channels).
        budget: optional budget of this warehouse if it differs from the manager's default.

    Forward: ``[B, *, C_in]`` -> ``[B, *, C_out]``; the attention sees the mean over all
    positions ``*`` of a sample. The recompute policy (``recompute_kernels``), the attention
    reduction, norm, function, init strategy and nonlocal basis are the manager's. KW*'s extra
    heads (``attention_extra_heads``) are defined for convs only.
    """

    def __init__(self,
                 in_features: int,
                 out_features: int,
                 bias: bool = True,
                 *,
                 warehouse_manager: WarehouseManager,
                 warehouse_name: str,
                 budget=None) -> None:
        super().__init__()
        if not isinstance(warehouse_manager, WarehouseManager):
            raise TypeError(f'KWLinear needs a WarehouseManager, got {type(warehouse_manager)}')
        for name, value in (('in_features', in_features), ('out_features', out_features)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f'KWLinear: {name} must be a positive integer, got {value!r}')
        self.in_features = in_features
        self.out_features = out_features
        self.warehouse_name = warehouse_name
        # Held outside the module tree: the manager belongs to the owner, not to each layer.
        object.__setattr__(self, 'warehouse_manager', warehouse_manager)
        self.warehouse_index = warehouse_manager.reserve(warehouse_name, self.weight_shape,
                                                         budget)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.attention: Optional[KWAttention] = None

    @property
    def weight_shape(self) -> Tuple[int, int, int, int]:
        """The weight as the 1x1 kernel the warehouse plans cells for: ``[out, in, 1, 1]``."""
        return (self.out_features, self.in_features, 1, 1)

    @property
    def recompute_kernels(self) -> Union[bool, str]:
        return self.warehouse_manager.recompute_kernels

    # ------------------------------------------------------------ binding (WarehouseManager.build)
    def bind(self, spec: WarehouseSpec, start: int, manager: WarehouseManager) -> int:
        """Attach to the built warehouse: create the attention and beta (A.2); return the next
        free cell index. Same as a 1x1 :class:`~mmkw.ops.KWConv2d` with these channels."""
        cell_shape = tuple(spec.cell_shape)
        if len(cell_shape) != 4 or cell_shape[2:] != (1, 1):
            raise ValueError(
                f'KWLinear in warehouse {spec.name!r}: its cells {list(cell_shape)} span a '
                'spatial kernel, but a linear layer needs [c_out, c_in, 1, 1] cells; share '
                'this warehouse with linear layers and 1x1 convs only')
        if manager.attention_extra_heads:
            raise ValueError(
                f'KWLinear in warehouse {spec.name!r}: attention_extra_heads (KW*, Table 17) '
                'adds kernel-position heads defined for convs; build the manager without it')
        self.cell_shape = cell_shape
        # (kernel positions, output-channel groups, input-channel groups) as for a KW conv
        self.mixture_grid = (1, self.out_features // cell_shape[0],
                             self.in_features // cell_shape[1])
        num_mixtures = self.mixture_grid[1] * self.mixture_grid[2]
        b = spec.budget.cell_num_ratio
        self.attention = KWAttention(self.in_features, num_mixtures, spec.num_cells, start, b,
                                     manager.reduction, manager.attention_norm,
                                     manager.nonlocal_basis_ratio, manager.attention_function,
                                     manager.share_cells)
        beta, end = init_beta(manager.attention_init, num_mixtures, spec.num_cells, start, b,
                              where=f'warehouse {spec.name!r}: ')
        self.attention.beta.copy_(beta)
        self.attention.init_strategy = manager.attention_init is not None
        return end

    def check_ready(self) -> None:
        if self.attention is None:
            raise RuntimeError(
                f'KWLinear in warehouse {self.warehouse_name!r} is not bound to its warehouse: '
                'the module owning the WarehouseManager must call manager.build(owner) after '
                'constructing its KW layers, and the layer must be used inside that owner')

    # ------------------------------------------------------------ the math
    def attend(self, tokens: torch.Tensor) -> Tuple[torch.Tensor]:
        """Attentions ``([B, m, n],)`` from tokens ``[B, N, C_in]``: the attention module on the
        mean over the tokens (the release's average pooling over its 1-D conv input)."""
        pooled = tokens.mean(dim=1)
        return (self.attention(pooled[:, :, None]), )

    def mix_cells(self, attention: torch.Tensor) -> torch.Tensor:
        """Eq. 3 for every cell of the weight: ``[B, G_out, G_in, c_out, c_in]`` from
        attentions ``[B, m, n]``."""
        cells = self.warehouse_manager.cells(self.warehouse_index)
        num_cells = cells.shape[0]
        mixed = matmul2d(attention.reshape(-1, num_cells),
                         cells.reshape(num_cells, -1).to(attention.dtype))
        return mixed.view(attention.shape[0], *self.mixture_grid[1:], *self.cell_shape[:2])

    def effective_weights(self, attention: torch.Tensor) -> torch.Tensor:
        """Per-sample weights ``[B, C_out, C_in]`` from attentions ``[B, m, n]`` (Eq. 3 and
        the inverse of the partition, Eq. 2): cell ``(o, c)`` holds
        ``W[o * c_out + a, c * c_in + d]``."""
        mixed = self.mix_cells(attention)
        # a view when there is one input-channel group (e.g. ViT's value and fc1 cells)
        weights = mixed.permute(0, 1, 3, 2, 4)
        return weights.reshape(attention.shape[0], self.out_features, self.in_features)

    def execution_path(self, tokens: torch.Tensor) -> str:
        """'mixed_tokens' when mixing the tokens takes fewer multiply-adds than assembling the
        weights and applying them (see the module docstring), else 'assembled'."""
        if in_release_formulation():
            return 'assembled'
        _, groups_out, groups_in = self.mixture_grid
        cell_out, cell_in = self.cell_shape[:2]
        num_cells, num_tokens = self.attention.num_cells, tokens.shape[1]
        # multiply-adds per sample of each path
        assembled = groups_out * groups_in * cell_out * cell_in * (num_cells + num_tokens)
        mixed = groups_out * num_cells * num_tokens * cell_in * (groups_in + cell_out)
        return 'mixed_tokens' if mixed <= MIXED_TOKENS_MAX_COST_RATIO * assembled \
            else 'assembled'

    def held_numel(self, tokens: torch.Tensor, path: str) -> int:
        """Numbers per sample a path keeps for backward: the assembled weight, or the mixed
        tokens (with their copy)."""
        if path == 'mixed_tokens':
            return 2 * self.mixture_grid[1] * self.attention.num_cells * tokens.shape[1] * \
                self.cell_shape[1]
        return self.out_features * self.in_features

    def recompute_share(self, tokens: torch.Tensor, path: str) -> float:
        """What recomputing adds to the layer's training step: assembling mixes n cells per
        weight, used once per token; mixing the tokens costs ``G_in`` per ``c_out`` of the
        warehouse matmul."""
        if path == 'mixed_tokens':
            return recompute_share(self.mixture_grid[2], self.cell_shape[0])
        return recompute_share(self.attention.num_cells, tokens.shape[1])

    def apply_weights(self, tokens: torch.Tensor, attention: Tuple[torch.Tensor, ...],
                      path: str) -> torch.Tensor:
        """``[B, N, C_out]`` (without bias) from tokens ``[B, N, C_in]`` and attentions, by
        ``path``."""
        alpha, = attention
        if path == 'mixed_tokens':
            return self._mixed_tokens(tokens, alpha)
        weights = self.effective_weights(alpha)
        with keep_output():
            return torch.bmm(tokens, weights.transpose(1, 2))

    def _mixed_tokens(self, tokens: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        # y[b, l, o] = sum_j E_j z[b, o, l, j] with z[b, o, l, j] = sum_c alpha[b, o, c, j]
        # x[b, l, c]: the attentions mix the tokens' channel groups, then one matmul with the
        # whole warehouse (laid out [(j, c_in), c_out]) applies every cell at once.
        batch, num_tokens, _ = tokens.shape
        _, groups_out, groups_in = self.mixture_grid
        cells = self.warehouse_manager.cells(self.warehouse_index).to(tokens.dtype)
        num_cells, cell_out, cell_in = cells.shape[:3]
        mixed = torch.einsum('bocj,blcd->boljd',
                             alpha.view(batch, groups_out, groups_in, num_cells),
                             tokens.reshape(batch, num_tokens, groups_in, cell_in))
        warehouse = cells.reshape(num_cells, cell_out, cell_in).permute(0, 2, 1)
        with keep_output():
            out = matmul2d(mixed.reshape(-1, num_cells * cell_in),
                           warehouse.reshape(num_cells * cell_in, cell_out))
        out = out.view(batch, groups_out, num_tokens, cell_out).transpose(1, 2)
        return out.reshape(batch, num_tokens, self.out_features)

    def _apply_recomputing(self, tokens: torch.Tensor, attention: Tuple[torch.Tensor, ...],
                           path: str) -> torch.Tensor:
        # Selective checkpointing: the per-sample weights are assembled again in the backward
        # pass instead of being kept; the attention stays outside, so its BatchNorm statistics
        # are updated once.
        def run(tokens, *attention):
            return self.apply_weights(tokens, attention, path)

        return checkpoint(run, tokens, *attention, use_reentrant=False,
                          respect_saved_tensors_hooks=False,
                          context_fn=partial(create_selective_checkpoint_contexts,
                                             _keep_marked_products))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_ready()
        if x.dim() < 2 or x.shape[-1] != self.in_features:
            raise ValueError(f'KWLinear expects input [B, *, {self.in_features}] (tokens last '
                             f'dimension = in_features), got {list(x.shape)}')
        if x.numel() == 0:
            # Neither the attention's norm nor the mean over tokens takes an empty input. The
            # empty output stays in the graph of the input and of the layer's parameters, so a
            # backward pass through it runs (and gives them zero gradients).
            anchor = x.sum() * 0
            for param in self.parameters():
                anchor = anchor + param.sum() * 0
            return x.new_zeros(*x.shape[:-1], self.out_features) + anchor
        batch = x.shape[0]
        tokens = x.reshape(batch, -1, self.in_features)
        attention = tuple(a.to(x.dtype) for a in self.attend(tokens))
        path = self.execution_path(tokens)
        release = in_release_formulation()  # the whole batch at once, weights kept
        if release:
            held, chunks = 0, [(0, batch)]
        else:
            held = self.held_numel(tokens, path)
            chunks = batch_chunks(batch, held)
        recompute = torch.is_grad_enabled() and not release and (
            per_sample_conv.recomputes(self.recompute_kernels, batch * held,
                                       self.recompute_share(tokens, path)))
        outs = []
        for start, end in chunks:
            part = slice(start, end) if len(chunks) > 1 else slice(None)
            chunk_attention = tuple(a[part] for a in attention)
            apply = self._apply_recomputing if recompute else self.apply_weights
            outs.append(apply(tokens[part], chunk_attention, path))
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The definition, sample by sample: ``x[b] @ W[b]^T + bias``. Slow; for tests."""
        self.check_ready()
        tokens = x.reshape(x.shape[0], -1, self.in_features)
        weights = self.effective_weights(self.attend(tokens)[0].to(x.dtype))
        out = torch.stack([tokens[b] @ weights[b].t() for b in range(x.shape[0])])
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f'in_features={self.in_features}, out_features={self.out_features}, '
                f'bias={self.bias is not None}, warehouse={self.warehouse_name!r}')
