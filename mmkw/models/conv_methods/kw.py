"""Kernel Warehouse as a conv method: which convs are KW convs and which warehouse each joins.

The layer choice and sharing are the release's (paper A.3, Tables 14-15):

- **ResNet**: every block conv and every strided 1x1 shortcut conv is a KW conv; the stem and the
  stride-1 shortcut stay static. One warehouse per *reassigned* stage: the first block of stage
  ``s`` hands its first conv and its shortcut to the warehouse of stage ``s - 1`` (Table 15), so
  in stage 0 a Bottleneck's first conv stays static. ``sharing`` and ``sharing_dims`` give the
  ablations of Tables 6-7 (see :class:`KW`).
- **MobileNetV2**: the seven layers form six KW stages ``(1, 2, 3, 4, 5, 6, 6)``, entry blocks
  handed to the previous stage as for ResNet; the stem has its own warehouse and the last 1x1
  conv joins stage 6's pointwise (or reduction) warehouse. Three layouts: ``'pw_dw'`` (the
  release's KW 1x: per stage one pointwise and one depthwise warehouse, 13 in all),
  ``'expand_dw_linear'`` (KW 4x: expansion, depthwise, reduction; 19), ``'dw_last_pw'`` (KW 1/2x:
  the stem and all depthwise convs at b = 1 with whole gcd cells, only stage 6's pointwise convs
  at the budget; attentions at reduction 1/32).
- **ConvNeXt**: every conv, attention norms LayerNorm. The stem and three downsampling convs get
  a warehouse each; each stage (or each of ``warehouse_groups`` groups of its blocks) one for the
  7x7 depthwise and one for the pointwise convs. ``layout='release'`` (one group per stage,
  reduction 1/16, 39.37M for Tiny) or ``'paper'`` (Table 14: stage 3 in three groups, reduction
  1/32, 32.99M); budget '3/4x' halves the last two pointwise groups (A.3).

Warehouse names: ResNet ``stage{s}`` (per stage), ``layer{s+1}.{block}`` (per block),
``layer{s+1}.{block}.conv{k}`` / ``.downsample`` (per conv), with ``_conv{k}`` (``'same'``) or
``_{out}x{in}x{kh}x{kw}`` (``'exact'``) appended; MobileNetV2 ``stem``, ``stage{k}_{pw,dw,expand,
linear}``; ConvNeXt ``stem``, ``downsample{i}``, ``stage{i}[.{group}]_{dw,pw}``.
"""
from typing import Dict, Optional, Sequence, Union

import torch.nn as nn

from mmkw.ops import Budget, WarehouseManager
from .base import CONV_METHODS, ConvMethod, ConvSite

SHARING_RANGES = ('stage', 'block', 'layer', 'none')
SHARING_DIMS = ('all', 'same', 'exact')
MOBILENET_LAYOUTS = ('pw_dw', 'expand_dw_linear', 'dw_last_pw')
CONVNEXT_LAYOUTS = ('release', 'paper')
# KW stage of each MobileNetV2 layer in the release; the last two layers share one
MOBILENET_KW_STAGES = (1, 2, 3, 4, 5, 6, 6)


def kw_conv_cfg(manager: Optional[WarehouseManager], warehouse: str,
                budget=None) -> Optional[dict]:
    """``conv_cfg`` of a KW conv in ``warehouse`` for mmcv's ``build_conv_layer``, or None (a
    static conv) without a manager."""
    if manager is None:
        return None
    return dict(type='KWConv2d', warehouse_manager=manager, warehouse_name=warehouse,
                budget=budget)


@CONV_METHODS.register_module()
class KW(ConvMethod):
    """Kernel Warehouse (Li & Yao, ICML 2024): ``conv_cfg=dict(type='KW', budget='1x', ...)``.

    Args:
        budget: convolutional parameter budget b (§3.3): '1/4x' .. '4x', any '<ratio>x', a
            number, or a dict of the three cell ratios; ConvNeXt also takes '3/4x' (A.3).
        reduction: attention hidden width ratio; None takes the release's per family: 1/16,
            1/32 for MobileNetV2 ``'dw_last_pw'`` and ConvNeXt ``'paper'``.
        nonlocal_basis_ratio: < 1 enables the nonlocal-basis attention (1/16 for the release's
            ResNet-50 KW 1/2x).
        attention_init: 'one_to_one' (A.2; the tau schedule applies) or None to hold tau at 0
            (fine-tuning, A.1.2); Table 13's 'all_to_one', 'n_to_one', 'one_to_n'.
        attention_function: 'caf' (Eq. 4) or Table 8's 'softmax', 'sigmoid', 'relu_norm'.
        recompute_kernels: True, False or 'auto' (see :class:`~mmkw.ops.WarehouseManager`).
        sharing: ResNet's sharing range (Table 6): 'stage', 'block', 'layer' or 'none'.
        sharing_dims: ResNet's sharing by kernel dimensions (Table 7): 'all', 'same', 'exact'.
        kernel_partition: False makes every cell a whole kernel (Table 5); needs warehouses of
            one kernel shape.
        layout: MobileNetV2: 'pw_dw', 'expand_dw_linear', 'dw_last_pw' or None (by budget: 1/2x
            'dw_last_pw', b > 1 'expand_dw_linear', else 'pw_dw'); ConvNeXt: 'release' (None)
            or 'paper'.
        warehouse_groups: ConvNeXt: per stage, how many consecutive groups of blocks get their
            own warehouses (each must divide the stage depth); None: by ``layout``.
        attention_extra_heads: KW* (Table 17, a reconstruction): add ODConv-style input-channel,
            output-channel and kernel-position heads to every KW attention.
        freeze_warehouses: with ``frozen_stages``, also freeze the warehouses the frozen convs
            draw from (True: the frozen stages compute a fixed function). False is the
            release's detection fine-tuning: those warehouses stay trainable and change through
            the later convs that share them.
    """
    name = 'KW'

    def __init__(self,
                 budget='1x',
                 reduction: Optional[float] = None,
                 nonlocal_basis_ratio: float = 1.0,
                 attention_init: Optional[str] = 'one_to_one',
                 attention_function: str = 'caf',
                 recompute_kernels: Union[bool, str] = 'auto',
                 sharing: str = 'stage',
                 sharing_dims: str = 'all',
                 kernel_partition: bool = True,
                 layout: Optional[str] = None,
                 warehouse_groups: Optional[Sequence[int]] = None,
                 attention_extra_heads: bool = False,
                 freeze_warehouses: bool = True) -> None:
        if sharing not in SHARING_RANGES:
            raise ValueError(f'sharing must be one of {SHARING_RANGES}, got {sharing!r}')
        if sharing_dims not in SHARING_DIMS:
            raise ValueError(f'sharing_dims must be one of {SHARING_DIMS}, got {sharing_dims!r}')
        self.budget = budget
        self.reduction = reduction
        self.nonlocal_basis_ratio = nonlocal_basis_ratio
        self.attention_init = attention_init
        self.attention_function = attention_function
        self.recompute_kernels = recompute_kernels
        self.sharing = sharing
        self.sharing_dims = sharing_dims
        self.kernel_partition = kernel_partition
        self.layout = layout
        self.warehouse_groups = None if warehouse_groups is None else tuple(warehouse_groups)
        self.attention_extra_heads = attention_extra_heads
        self.freeze_warehouses = bool(freeze_warehouses)
        self.warehouse_manager: Optional[WarehouseManager] = None

    # ------------------------------------------------------------ set-up per family
    def setup(self, family: str, backbone: str, **arch) -> None:
        super().setup(family, backbone, **arch)
        budget = self.budget
        reduction = self.reduction
        attention_norm = 'BN'
        if family != 'resnet' and (self.sharing, self.sharing_dims) != ('stage', 'all'):
            raise ValueError(f'{backbone}: KW sharing={self.sharing!r}, sharing_dims='
                             f'{self.sharing_dims!r} are ResNet ablations (Tables 6-7); '
                             f'{family} takes layout / warehouse_groups')
        if family == 'resnet':
            if self.layout is not None or self.warehouse_groups is not None:
                raise ValueError(f'{backbone}: KW layout / warehouse_groups apply to '
                                 'MobileNetV2 and ConvNeXt; ResNet takes sharing and '
                                 'sharing_dims')
            if not self.kernel_partition and self.sharing in ('stage', 'block') and \
                    self.sharing_dims != 'exact':
                raise ValueError(
                    "kernel_partition=False makes every cell a whole kernel, so a warehouse can "
                    "only hold kernels of one shape: set sharing_dims='exact' or "
                    f"sharing='layer' (got sharing={self.sharing!r}, "
                    f"sharing_dims={self.sharing_dims!r})")
        elif family == 'mobilenet_v2':
            layout = self.layout
            if layout is None:
                b = Budget.parse(budget)
                layout = ('dw_last_pw' if b == Budget.parse('1/2x') else
                          'expand_dw_linear' if b.b > 1 else 'pw_dw')
            if layout not in MOBILENET_LAYOUTS:
                raise ValueError(f'{backbone}: KW layout must be one of {MOBILENET_LAYOUTS} or '
                                 f'None, got {layout!r}')
            self.layout = layout
            if reduction is None:
                reduction = 1 / 32 if layout == 'dw_last_pw' else 1 / 16
        elif family == 'convnext':
            layout = self.layout or 'release'
            if layout not in CONVNEXT_LAYOUTS:
                raise ValueError(f"{backbone}: KW layout must be 'release' or 'paper', got "
                                 f'{layout!r}')
            self.layout = layout
            depths = list(arch['depths'])
            groups = self.warehouse_groups
            if groups is None:
                groups = [1] * len(depths)
                if layout == 'paper' and len(depths) > 2:
                    groups[2] = 3  # Table 14: the 9 blocks of stage 3 in three groups
            if len(groups) != len(depths) or any(
                    g < 1 or depth % g for g, depth in zip(groups, depths)):
                raise ValueError(f'{backbone}: warehouse_groups {tuple(groups)} needs one '
                                 f'positive divisor of each stage depth {depths}')
            self.warehouse_groups = tuple(groups)
            if reduction is None:
                reduction = 1 / 16 if layout == 'release' else 1 / 32
            attention_norm = 'LN'
            # '3/4x' is a mix, not a ratio: 1x everywhere, 1/2x on the last two pointwise groups
            all_groups = [(i, g) for i, n in enumerate(groups) for g in range(n)]
            self.half_pw_groups = set(all_groups[-2:]) \
                if Budget.parse(budget) == Budget.parse('3/4x') else set()
            if self.half_pw_groups:
                budget = '1x'
        self.warehouse_manager = WarehouseManager(
            budget=budget, reduction=1 / 16 if reduction is None else reduction,
            nonlocal_basis_ratio=self.nonlocal_basis_ratio, attention_norm=attention_norm,
            attention_init=self.attention_init, attention_function=self.attention_function,
            kernel_partition=self.kernel_partition, recompute_kernels=self.recompute_kernels,
            share_cells=self.sharing != 'none', attention_extra_heads=self.attention_extra_heads)

    def shared_modules(self) -> Dict[str, nn.Module]:
        return {'warehouse_manager': self.warehouse_manager}

    def finish(self, backbone: nn.Module) -> None:
        self.warehouse_manager.build(backbone)

    def freeze_shared(self, modules) -> None:
        if self.freeze_warehouses:
            self.warehouse_manager.freeze_warehouses_of(modules)

    # ------------------------------------------------------------ layer choice and sharing
    def conv_cfg(self, site: ConvSite) -> Optional[dict]:
        return getattr(self, f'_{site.family}_cfg')(site)

    def _cfg(self, warehouse: str, budget=None) -> dict:
        return kw_conv_cfg(self.warehouse_manager, warehouse, budget)

    def _resnet_cfg(self, site: ConvSite) -> Optional[dict]:
        stage = site.sharing_stage
        if site.role == 'stem' or stage < 0 or (site.role == 'downsample' and site.stride == 1):
            return None  # only a strided shortcut is a KW conv in the release
        block, conv = site.name.rsplit('.', 1)
        if self.sharing == 'stage':
            name = f'stage{stage}'
        elif self.sharing in ('layer', 'none') or stage != site.stage:
            # One warehouse per conv; in 'block' mode a conv reassigned to the previous stage
            # also forms one of its own, as with the release's sharing_range=('conv',).
            name = site.name
        else:
            name = block
        if self.sharing_dims == 'same':
            # the release's per-position names: the shortcut conv is its block's 'conv0'
            name += '_' + ('conv1' if conv == 'downsample' else conv)
        elif self.sharing_dims == 'exact':
            out_ch, in_ch, k = site.shape
            name += f'_{out_ch}x{in_ch // site.groups}x{k}x{k}'
        return self._cfg(name)

    def _mobilenet_v2_cfg(self, site: ConvSite) -> Optional[dict]:
        if site.role == 'stem':
            # its own warehouse (whole gcd cells, b = 1 in the 'dw_last_pw' layout)
            return self._cfg('stem', '1x' if self.layout == 'dw_last_pw' else None)
        stage = MOBILENET_KW_STAGES[site.sharing_stage]
        role = 'project' if site.role == 'last' else site.role
        if self.layout == 'pw_dw':
            return self._cfg(f'stage{stage}_{"dw" if role == "depthwise" else "pw"}')
        suffix = {'expand': 'expand', 'depthwise': 'dw', 'project': 'linear'}[role]
        if self.layout == 'expand_dw_linear':
            return self._cfg(f'stage{stage}_{suffix}')
        # 'dw_last_pw': depthwise convs always KW with whole gcd cells and b = 1; pointwise
        # convs KW (at the budget) only in the last KW stage
        if role == 'depthwise':
            return self._cfg(f'stage{stage}_dw', '1x')
        return self._cfg(f'stage{stage}_{suffix}') if stage == MOBILENET_KW_STAGES[-1] \
            else None

    def _convnext_cfg(self, site: ConvSite) -> Optional[dict]:
        if site.role == 'stem':
            return self._cfg('stem')
        if site.role == 'downsample':
            return self._cfg(f'downsample{site.stage}')
        groups = self.warehouse_groups[site.stage]
        group = site.block * groups // site.num_blocks
        name = f'stage{site.stage}' if groups == 1 else f'stage{site.stage}.{group}'
        if site.role == 'depthwise':
            return self._cfg(f'{name}_dw')
        return self._cfg(f'{name}_pw',
                         '1/2x' if (site.stage, group) in self.half_pw_groups else None)


@CONV_METHODS.register_module()
class KWStar(KW):
    """KW* (Table 17): KW whose attentions also weigh the input channels, output channels and
    kernel positions, ODConv-style. No code was released; this is the reconstruction of
    ``../shared/notes/peers_format.md`` §4 (12,507,761 parameters on MobileNetV2 1.0x KW 4x):
    three heads with bias and sigmoid on every KW attention's trunk. Same arguments as
    :class:`KW`."""
    name = 'KWStar'

    def __init__(self, **kwargs) -> None:
        if kwargs.pop('attention_extra_heads', True) is not True:
            raise ValueError('KWStar is KW with attention_extra_heads=True; use type=KW for '
                             'plain KW')
        super().__init__(attention_extra_heads=True, **kwargs)
