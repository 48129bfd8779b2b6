"""Warehouse construction-with-sharing (paper §3.2-3.3, Algorithm 1 part A).

A :class:`WarehouseManager` is owned by a backbone. KW convs *reserve* a place in a named
warehouse while the backbone is constructed; :meth:`WarehouseManager.build` then fixes the cell
shape of every warehouse from the greatest common divisors of its convs' kernels, creates the
cell tensors, and binds each conv (in ``model.modules()`` order) to its cells: the conv gets its
attention module, its beta (the init strategy of A.2, one-to-one by default) and ownership of
the cells it initialises.

The layout follows the official release so that its checkpoints load by renaming keys only:
warehouse ``w`` (in order of first reservation) is the parameter ``weights.{w}`` of shape
``[n, cell_out, cell_in, cell_kh, cell_kw]``.
"""
import math
from dataclasses import dataclass, field
from functools import reduce
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .attention_options import (ATTENTION_INITS, check_attention_function,  # noqa: F401
                                check_attention_init, whole)
from .budget import Budget, BudgetLike

# init strategies whose beta gives every cell to some mixture (the walk must use up the cells)
OWNING_INITS = ('one_to_one', 'n_to_one', 'one_to_n')


@dataclass
class WarehouseSpec:
    """What the convs sharing one warehouse need from it (filled in by ``build``)."""
    name: str
    budget: Budget
    kernel_shapes: List[Tuple[int, ...]] = field(default_factory=list)  # [out, in/groups, kh, kw]
    conv_names: List[str] = field(default_factory=list)
    cell_shape: Optional[Tuple[int, ...]] = None  # [cell_out, cell_in, cell_kh, cell_kw]
    num_mixtures: List[int] = field(default_factory=list)  # m of each conv

    @property
    def num_cells(self) -> int:
        """n = max(int(mt * b), 1), mt being the total mixture count of the convs."""
        return max(int(sum(self.num_mixtures) * self.budget.cell_num_ratio), 1)


def num_mixtures(kernel_shape: Sequence[int], cell_shape: Sequence[int]) -> int:
    """m of a conv: how many cells tile its kernel (Eq. 2)."""
    return reduce(lambda a, b: a * b, (k // c for k, c in zip(kernel_shape, cell_shape)), 1)


class WarehouseManager(nn.Module):
    """Owns the warehouses of a network and binds its KW convs to them.

    Args:
        budget: default budget of the warehouses (see :meth:`Budget.parse`); a conv may ask
            for another one per warehouse when it reserves.
        reduction: hidden width of the attention as a fraction of the input channels
            (at least 16 units), 1/16 in the paper.
        nonlocal_basis_ratio: < 1 represents the attention logits of the cells a conv does not
            own through a smaller basis (the release's ResNet50 KW 1/2x uses 1/16).
        attention_norm: 'BN' (BatchNorm1d, fc1 without bias) or 'LN' (LayerNorm, fc1 with
            bias; KW-ConvNeXt).
        spatial_partition: split kernels into 1x1 spatial cells (the paper); False makes
            cells span the whole spatial kernel.
        attention_init: the init strategy of beta (A.2, Table 13): 'one_to_one' (the paper's),
            'all_to_one', 'n_to_one' (b > 1), 'one_to_n' (b < 1), or None / 'none' to disable
            it (tau is then held at 0, as for fine-tuning, and Table 9's "without" row). See
            :mod:`mmkw.ops.attention_options`.
        attention_function: 'caf' (Eq. 4, the paper's), 'softmax', 'sigmoid' or 'relu_norm'
            (Table 8's alternatives), network-wide.
        kernel_partition: False turns kernel partition off (Table 5's "without" row): every
            cell is a whole kernel ``[out, in/groups, kh, kw]`` (m = 1 per conv), so KW becomes
            DY-Conv-style mixing of whole kernels from a shared warehouse (§3.5). All kernels of
            a warehouse must then have one shape (share warehouses among same-dimensioned
            kernels only, Table 7); the budget's cell-size ratios do not apply.
        share_cells: False removes warehouse sharing altogether (Table 6's "without sharing"
            row): every mixture uses only its own cell (``w_i = alpha_i e_i``), so a conv's
            kernel cells are scaled by attentions instead of mixed. Needs b = 1, no nonlocal
            basis and attention_init 'one_to_one' or None.
        recompute_kernels: in training, whether a conv assembles its per-sample kernels again
            in the backward pass instead of keeping them (``B x params`` numbers) from the
            forward pass (on the mixed-input path of small maps: mixes its input again): one
            more assembly per conv and step for a much smaller peak memory (see
            :func:`mmkw.ops.kw_conv.convolve_recomputing_kernels`). True, False, or 'auto'
            (default): keep the kernels (or mixed input) of a batch up to
            ``RECOMPUTE_MIN_NUMEL`` numbers (32 MiB in fp32), which cost little to keep; up to
            ``RECOMPUTE_MAX_NUMEL`` (96 MiB) keep them where assembling them again would add
            more than ``RECOMPUTE_MAX_SHARE`` to the conv's training step (many cells against
            few output positions: the stage-4 convs of 4x warehouses); recompute the rest
            (see :func:`mmkw.ops.per_sample_conv.auto_recomputes`).
        attention_extra_heads: KW* (Table 17, a reconstruction): every attention also gets
            ODConv-style heads (sigmoid, with bias) over the input channels, output channels and
            kernel positions of its conv.
    """

    def __init__(self,
                 budget: BudgetLike = '1x',
                 reduction: float = 1 / 16,
                 nonlocal_basis_ratio: float = 1.0,
                 attention_norm: str = 'BN',
                 spatial_partition: bool = True,
                 attention_init: Optional[str] = 'one_to_one',
                 attention_function: str = 'caf',
                 kernel_partition: bool = True,
                 share_cells: bool = True,
                 recompute_kernels: Union[bool, str] = 'auto',
                 attention_extra_heads: bool = False) -> None:
        super().__init__()
        if attention_norm not in ('BN', 'LN'):
            raise ValueError(f"attention_norm must be 'BN' or 'LN', got {attention_norm!r}")
        attention_init = check_attention_init(attention_init)
        self.attention_function = check_attention_function(attention_function)
        if not isinstance(kernel_partition, bool):
            raise ValueError(f'kernel_partition must be True or False, got {kernel_partition!r}')
        self.kernel_partition = kernel_partition
        if not share_cells:
            if Budget.parse(budget).cell_num_ratio != 1:
                raise ValueError('share_cells=False gives every mixture its own cell and needs '
                                 f'the budget b = 1, got {budget!r}')
            if nonlocal_basis_ratio < 1:
                raise ValueError('share_cells=False has no nonlocal cells: nonlocal_basis_ratio '
                                 f'must be 1, got {nonlocal_basis_ratio}')
            if attention_init not in ('one_to_one', None):
                raise ValueError("share_cells=False needs attention_init 'one_to_one' or None "
                                 f'(a mixture cannot reach other cells), got {attention_init!r}')
        self.share_cells = share_cells
        if recompute_kernels not in (True, False, 'auto'):
            raise ValueError("recompute_kernels must be True, False or 'auto', got "
                             f'{recompute_kernels!r}')
        self.recompute_kernels = recompute_kernels
        self.attention_extra_heads = bool(attention_extra_heads)
        if not 0 < reduction <= 1:
            raise ValueError(f'reduction must be in (0, 1], got {reduction}')
        if not 0 < nonlocal_basis_ratio <= 1:
            raise ValueError(f'nonlocal_basis_ratio must be in (0, 1], got {nonlocal_basis_ratio}')
        self.budget = Budget.parse(budget)
        self.reduction = reduction
        self.nonlocal_basis_ratio = nonlocal_basis_ratio
        self.attention_norm = attention_norm
        self.spatial_partition = spatial_partition
        self.attention_init = attention_init
        self.weights = nn.ParameterList()
        self.specs: Dict[str, WarehouseSpec] = {}
        self.built = False

    # ---------------------------------------------------------------- construction
    def reserve(self, warehouse_name: str, kernel_shape: Sequence[int],
                budget: Optional[BudgetLike] = None) -> int:
        """Record a conv of weight shape ``[out, in/groups, kh, kw]`` in a warehouse.

        Returns the warehouse index (order of first reservation).
        """
        if self.built:
            raise RuntimeError(f'cannot reserve a conv in warehouse {warehouse_name!r}: the '
                               'warehouses were already built')
        budget = self.budget if budget is None else Budget.parse(budget)
        spec = self.specs.get(warehouse_name)
        if spec is None:
            spec = self.specs[warehouse_name] = WarehouseSpec(warehouse_name, budget)
        elif spec.budget != budget:
            raise ValueError(f'warehouse {warehouse_name!r} was reserved with budget '
                             f'{spec.budget} and now with {budget}: one warehouse, one budget')
        spec.kernel_shapes.append(tuple(int(s) for s in kernel_shape))
        return list(self.specs).index(warehouse_name)

    def _plan(self, spec: WarehouseSpec) -> None:
        shapes = spec.kernel_shapes
        budget = spec.budget
        if not self.kernel_partition:
            self._plan_whole_kernels(spec)
            return
        out_gcd = reduce(math.gcd, (s[0] for s in shapes))
        in_gcd = reduce(math.gcd, (s[1] for s in shapes))
        cell_out = max(int(out_gcd * budget.cell_outplane_ratio), 1)
        cell_in = max(int(in_gcd * budget.cell_inplane_ratio), 1)
        for shape in shapes:
            if shape[0] % cell_out or shape[1] % cell_in:
                raise ValueError(
                    f'warehouse {spec.name!r}: no valid cell shape for kernels {shapes}: cells of '
                    f'{cell_out}x{cell_in} channels (gcd {out_gcd}x{in_gcd} times ratios '
                    f'{budget.cell_outplane_ratio}x{budget.cell_inplane_ratio}) do not divide '
                    f'kernel {list(shape)}')
        if self.spatial_partition:
            cell_kernel = (1,) * (len(shapes[0]) - 2)
        else:
            cell_kernel = shapes[0][2:]
            if any(s[2:] != cell_kernel for s in shapes):
                raise ValueError(f'warehouse {spec.name!r}: without spatial partition all its '
                                 f'kernels need one spatial size, got {[s[2:] for s in shapes]}')
        spec.cell_shape = (cell_out, cell_in, *cell_kernel)
        spec.num_mixtures = [num_mixtures(s, spec.cell_shape) for s in shapes]
        self._check_init(spec)

    def _plan_whole_kernels(self, spec: WarehouseSpec) -> None:
        # Without kernel partition a cell is a whole kernel, which only exists when all
        # kernels of the warehouse have one shape.
        shapes = spec.kernel_shapes
        if any(s != shapes[0] for s in shapes):
            raise ValueError(
                f'warehouse {spec.name!r}: kernel_partition=False makes every cell a whole '
                f'kernel, but its kernels have different shapes {sorted(set(shapes))}; share '
                "warehouses among same-shaped kernels only (e.g. KWResNet(sharing_dims="
                "'exact')) or turn kernel partition on")
        spec.cell_shape = tuple(shapes[0])
        spec.num_mixtures = [1] * len(shapes)
        self._check_init(spec)

    def _check_init(self, spec: WarehouseSpec) -> None:
        b = spec.budget.cell_num_ratio
        if self.attention_init in OWNING_INITS:
            # These strategies need whole cells per mixture (b >= 1) or whole mixtures per
            # cell (b < 1); otherwise the warehouse cannot be fully owned (A.2).
            if not whole(b if b >= 1 else 1 / b):
                raise ValueError(f'warehouse {spec.name!r}: budget b={b} cannot be initialised '
                                 f'with attention_init={self.attention_init!r}: b or 1/b must '
                                 'be a whole number')

    def build(self, model: nn.Module) -> None:
        """Create the warehouses and bind every KW layer of ``model`` reserved here (KW convs
        and ``KWLinear`` layers, in ``model.named_modules()`` order).

        Must be called once, after all convs are constructed, with the module that contains
        them (usually the backbone itself).
        """
        if self.built:
            raise RuntimeError('WarehouseManager.build() was already called')
        if not self.specs:
            raise RuntimeError('WarehouseManager.build(): no KW conv reserved a warehouse')
        for spec in self.specs.values():
            self._plan(spec)
            self.weights.append(nn.Parameter(torch.empty(spec.num_cells, *spec.cell_shape)))
        starts = [0] * len(self.specs)
        bound = [0] * len(self.specs)
        specs = list(self.specs.values())
        for name, module in model.named_modules():
            if not self._is_own_layer(module):
                continue
            index = module.warehouse_index
            spec = specs[index]
            if bound[index] >= len(spec.kernel_shapes):
                raise RuntimeError(f'KW conv {name!r} uses warehouse {spec.name!r} more times '
                                   'than convs reserved it')
            spec.conv_names.append(name)
            end = module.bind(spec, starts[index], self)
            self._init_owned_cells(index, starts[index], end)
            starts[index] = end
            bound[index] += 1
        for index, spec in enumerate(specs):
            if bound[index] != len(spec.kernel_shapes):
                raise RuntimeError(
                    f'warehouse {spec.name!r}: {len(spec.kernel_shapes)} convs reserved it but '
                    f'{bound[index]} were found in the model passed to build(); a KW conv must '
                    'live inside the module that owns its warehouse manager')
            if self.attention_init in OWNING_INITS and starts[index] != spec.num_cells:
                raise ValueError(f'warehouse {spec.name!r}: the {self.attention_init} init '
                                 f'assigned {starts[index]} of its n={spec.num_cells} cells (mt='
                                 f'{sum(spec.num_mixtures)}, b={spec.budget.b})')
            # Cells no conv owns (only without beta and with a budget whose b and 1/b are not
            # whole) still need an init: they take the fan-out of the warehouse's cell.
            self._init_owned_cells(index, starts[index], spec.num_cells)
        self.built = True

    def _is_own_layer(self, module: nn.Module) -> bool:
        """Whether ``module`` is a KW layer that reserved cells here: a ``KWConv2d``, a
        ``KWLinear`` or any layer with their binding interface (``warehouse_manager``,
        ``warehouse_index``, ``bind(spec, start, manager) -> end``)."""
        return getattr(module, 'warehouse_manager', None) is self and \
            isinstance(getattr(module, 'warehouse_index', None), int) and \
            callable(getattr(module, 'bind', None))

    def _init_owned_cells(self, index: int, start: int, end: int) -> None:
        # Each conv initialises the cells it owns like a kernel of its own (fan_out); with
        # the init strategy disabled ownership still follows the one-to-one walk.
        cells = self.weights[index]
        if end > start:
            with torch.no_grad():
                nn.init.kaiming_normal_(
                    cells[start:end].view(-1, *cells.shape[2:]), mode='fan_out',
                    nonlinearity='relu')

    # ---------------------------------------------------------------- use
    def cells(self, index: int) -> torch.Tensor:
        return self.weights[index]

    def freeze_warehouses_of(self, modules) -> None:
        """Stop the gradient of every warehouse that a KW conv inside ``modules`` draws from.

        Frozen stages must compute a fixed function, so a warehouse shared with a later,
        trainable stage is frozen too; the trainable convs keep learning their attentions over
        its cells.
        """
        for module in modules:
            for conv in module.modules():
                if self._is_own_layer(conv):
                    self.weights[conv.warehouse_index].requires_grad = False

    def summary(self) -> List[dict]:
        """One row per warehouse: name, n, mt, cell shape, budget, convs sharing it."""
        return [
            dict(name=spec.name, n=spec.num_cells, mt=sum(spec.num_mixtures),
                 cell_shape=list(spec.cell_shape), b=spec.budget.b, convs=len(spec.kernel_shapes))
            for spec in self.specs.values()
        ]

    def extra_repr(self) -> str:
        return ', '.join(f"{s['name']}: n={s['n']} mt={s['mt']} cell={s['cell_shape']}"
                         for s in self.summary()) if self.built else 'not built'

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A checkpoint of another budget or depth must never half-load (mmengine only warns on
        # size mismatches): name the first warehouse that differs.
        names = list(self.specs)
        for key in state_dict:
            if not key.startswith(prefix + 'weights.'):
                continue
            suffix = key[len(prefix + 'weights.'):]
            if not suffix.isdigit():
                continue
            index = int(suffix)
            if index >= len(self.weights):
                raise ValueError(f'checkpoint has warehouse {key!r} but this model has only '
                                 f'{len(self.weights)} warehouses ({names}): it was built for '
                                 'another architecture')
            expected = tuple(self.weights[index].shape)
            got = tuple(state_dict[key].shape)
            if got != expected:
                spec = self.specs[names[index]]
                raise ValueError(
                    f'warehouse {key!r} ({spec.name!r}, budget b={spec.budget.b}): checkpoint '
                    f'cells {list(got)} (n={got[0]}) do not match this model\'s {list(expected)} '
                    f'(n={expected[0]}): the checkpoint comes from another budget or depth')
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
