"""ResNet with Kernel Warehouse convolutions (paper §4, A.3, Tables 14-15).

Warehouse sharing follows the release: one warehouse per *reassigned* stage. The first block
of stage ``s`` (0-based) puts its first conv and its strided downsample conv into warehouse
``s - 1`` (Table 15), so a warehouse is shared by all convs of its stage plus the entry convs
of the next one. The stem is a normal conv; in stage 0 a Bottleneck's first 1x1 conv and the
stride-1 downsample stay normal convs.

Sharing range, for the paper's ablations (the default ``sharing='stage'``, ``sharing_dims='all'``
is the release's one warehouse per reassigned stage):

* ``sharing`` (Table 6, "in terms of layer"; the paper's *layer* is a convolutional layer, §3.3
  "layer-specific warehouse"): ``'layer'`` gives every conv its own warehouse, shared by its
  ``m`` mixtures (ResNet18 KW 1x: 11.81M, the paper's "within each layer" row); ``'none'`` also
  stops the mixtures of one conv from sharing cells, each using only its own
  (``share_cells=False`` of the manager; 11.78M, the "without sharing" row); ``'block'``, not in
  the paper's tables, shares within each residual block as the release's
  ``sharing_range=('conv',)`` does (the entry convs that Table 15 reassigns to the previous
  stage each get their own warehouse; ResNet18 KW 1x: 11.82M).
* ``sharing_dims`` (Table 7, "in terms of static kernel dimensions"): ``'same'`` gives each
  stage one warehouse per conv position in the block (the release's
  ``sharing_range=('layer',)``): the 1x1 reduce convs, the 3x3 convs and the 1x1 expand convs
  share separately, and the reassigned entry conv and downsample join the reduce convs (same
  kernel size, other channel counts). This reproduces Table 7's ResNet50 KW 1x count, 26.95M.
  ``'exact'`` splits by the exact kernel shape instead (26.93M), so that whole-kernel cells
  (``kernel_partition=False``, Table 5) can be shared.

Warehouse names: ``stage{s}`` (per stage), ``layer{s+1}.{block}`` (per block),
``layer{s+1}.{block}.conv{k}`` / ``.downsample`` (per conv), with ``_conv{k}`` (``'same'``) or
``_{out}x{in}x{kh}x{kw}`` (``'exact'``) appended.

Freezing (``frozen_stages = k``): the stem, stages ``1..k`` and the warehouses ``0..k-1`` they
draw their cells from are frozen, so the frozen stages compute a fixed function. The entry
convs of stage ``k + 1`` keep trainable attentions over the frozen cells of warehouse ``k-1``.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn import build_conv_layer, build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule
from mmengine.registry import MODELS

from mmkw.ops import WarehouseManager
from .utils import batch_norms_to_eval, freeze_stages, kw_conv_cfg


SHARING_RANGES = ('stage', 'block', 'layer', 'none')
SHARING_DIMS = ('all', 'same', 'exact')


class KWBasicBlock(BaseModule):
    """ResNet basic block whose 3x3 convs are built from ``conv_cfgs`` (two entries)."""
    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int,
                 conv_cfgs: Sequence[Optional[dict]], downsample: Optional[nn.Module],
                 norm_cfg: dict, drop_path_rate: float = 0.0, with_cp: bool = False,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.with_cp = with_cp
        self.conv1 = build_conv_layer(conv_cfgs[0], in_channels, out_channels, 3, stride=stride,
                                      padding=1, bias=False)
        self.bn1 = build_norm_layer(norm_cfg, out_channels)[1]
        self.conv2 = build_conv_layer(conv_cfgs[1], out_channels, out_channels, 3, padding=1,
                                      bias=False)
        self.bn2 = build_norm_layer(norm_cfg, out_channels)[1]
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    @property
    def last_norm(self) -> nn.Module:
        return self.bn2

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.drop_path(out) + identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            out = cp.checkpoint(self._residual, x, use_reentrant=False)
        else:
            out = self._residual(x)
        return self.relu(out)


class KWBottleneck(BaseModule):
    """ResNet bottleneck (pytorch style: stride on the 3x3 conv); ``conv_cfgs`` has three
    entries."""
    expansion = 4

    def __init__(self, in_channels: int, out_channels: int, stride: int,
                 conv_cfgs: Sequence[Optional[dict]], downsample: Optional[nn.Module],
                 norm_cfg: dict, drop_path_rate: float = 0.0, with_cp: bool = False,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        mid = out_channels // self.expansion
        self.with_cp = with_cp
        self.conv1 = build_conv_layer(conv_cfgs[0], in_channels, mid, 1, bias=False)
        self.bn1 = build_norm_layer(norm_cfg, mid)[1]
        self.conv2 = build_conv_layer(conv_cfgs[1], mid, mid, 3, stride=stride, padding=1,
                                      bias=False)
        self.bn2 = build_norm_layer(norm_cfg, mid)[1]
        self.conv3 = build_conv_layer(conv_cfgs[2], mid, out_channels, 1, bias=False)
        self.bn3 = build_norm_layer(norm_cfg, out_channels)[1]
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    @property
    def last_norm(self) -> nn.Module:
        return self.bn3

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.drop_path(out) + identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            out = cp.checkpoint(self._residual, x, use_reentrant=False)
        else:
            out = self._residual(x)
        return self.relu(out)


@MODELS.register_module()
class KWResNet(BaseModule):
    """ResNet backbone with Kernel Warehouse convolutions.

    Same interface as mmpretrain's / mmdet's ``ResNet`` (pytorch style), plus the KW options.

    Args:
        depth: 18, 34, 50, 101 or 152.
        budget: convolutional parameter budget b (paper §3.3): '1/4x', '1/2x', '1x', '2x',
            '4x', any '<ratio>x', a number, or a dict of the three cell ratios. None builds the
            same network with normal convs (a plain baseline of identical structure).
        reduction: attention hidden width ratio (1/16).
        nonlocal_basis_ratio: < 1 enables the nonlocal-basis attention (1/16 for the
            release's ResNet50 KW 1/2x).
        attention_init: 'one_to_one' (paper A.2; tau schedules apply) or None to disable the
            init strategy, holding tau at 0 (fine-tuning, A.1.2); the ablations of Table 13:
            'all_to_one', 'n_to_one' (b > 1), 'one_to_n' (b < 1).
        attention_function: 'caf' (the paper's, Eq. 4) or the ablations of Table 8:
            'softmax', 'sigmoid', 'relu_norm' (``max(z, 0) / sum|z|``).
        recompute_kernels: assemble large per-sample kernels again in the backward pass
            instead of keeping them (True, False or 'auto'; see
            :class:`~mmkw.ops.WarehouseManager`): far less training memory for one more
            assembly per conv.
        sharing: warehouse sharing range in terms of layers (Table 6): 'stage' (the paper's,
            reassigned stages of Table 15), 'layer' (one warehouse per conv), 'none' (no
            sharing: each mixture uses its own cell; needs b = 1) or 'block' (per residual
            block, the release's option). See the module docstring.
        sharing_dims: 'all' (the paper's: kernels of different dimensions share a warehouse),
            'same' (Table 7's same-dimensioned kernels: one warehouse per conv position) or
            'exact' (one warehouse per exact kernel shape).
        kernel_partition: False makes every cell a whole kernel (Table 5's "without" row);
            needs warehouses of one kernel shape: ``sharing_dims='exact'`` or
            ``sharing='layer'`` / ``'none'``.
        in_channels: input image channels.
        stem_channels: output channels of the stem.
        stem_kernel_size: kernel of the stem conv (7; 3 for small inputs).
        stem_stride: stride of the stem conv (2; 1 for small inputs).
        stem_pool: max-pool after the stem (True; False for small inputs).
        base_channels: channels of the first stage (before expansion).
        num_stages: 1 to 4.
        strides: stride of the first block of each stage.
        out_indices: stages whose outputs are returned (0-based).
        frozen_stages: stages to freeze with their warehouses (-1: none, 0: only the stem);
            see the module docstring for the shared warehouse of the next stage.
        norm_cfg: norm of the conv blocks.
        norm_eval: keep all BatchNorm layers (the attentions' BatchNorm1d included) in eval
            mode while training.
        with_cp: gradient checkpointing of the blocks.
        zero_init_residual: zero-init the last norm of each block (ignored for pretrained).
        drop_path_rate: stochastic depth, rising linearly over the blocks to this value.
        init_cfg: mmengine init config; ``dict(type='Pretrained', checkpoint=..., prefix=...)``
            loads weights.

    Forward: ``[B, in_channels, H, W]`` -> tuple of feature maps of the ``out_indices`` stages,
    ``[B, base_channels * 2**i * expansion, H / 2**(i+2), W / 2**(i+2)]`` with the default stem.
    """

    arch_settings = {
        18: (KWBasicBlock, (2, 2, 2, 2)),
        34: (KWBasicBlock, (3, 4, 6, 3)),
        50: (KWBottleneck, (3, 4, 6, 3)),
        101: (KWBottleneck, (3, 4, 23, 3)),
        152: (KWBottleneck, (3, 8, 36, 3)),
    }

    def __init__(self,
                 depth: int,
                 budget='1x',
                 reduction: float = 1 / 16,
                 nonlocal_basis_ratio: float = 1.0,
                 attention_init: Optional[str] = 'one_to_one',
                 attention_function: str = 'caf',
                 recompute_kernels: Union[bool, str] = 'auto',
                 sharing: str = 'stage',
                 sharing_dims: str = 'all',
                 kernel_partition: bool = True,
                 in_channels: int = 3,
                 stem_channels: int = 64,
                 stem_kernel_size: int = 7,
                 stem_stride: int = 2,
                 stem_pool: bool = True,
                 base_channels: int = 64,
                 num_stages: int = 4,
                 strides: Sequence[int] = (1, 2, 2, 2),
                 out_indices: Sequence[int] = (3, ),
                 style: str = 'pytorch',
                 frozen_stages: int = -1,
                 norm_cfg: dict = dict(type='BN', requires_grad=True),
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 zero_init_residual: bool = False,
                 drop_path_rate: float = 0.0,
                 init_cfg=(dict(type='Kaiming', layer=['Conv2d']),
                           dict(type='Constant', val=1, layer=['_BatchNorm', 'GroupNorm']))):
        super().__init__(init_cfg=list(init_cfg) if isinstance(init_cfg, tuple) else init_cfg)
        if depth not in self.arch_settings:
            raise KeyError(f'invalid depth {depth} for KWResNet, choose from '
                           f'{sorted(self.arch_settings)}')
        if not 1 <= num_stages <= 4:
            raise ValueError(f'num_stages must be 1 to 4, got {num_stages}')
        if len(strides) != num_stages:
            raise ValueError(f'strides {tuple(strides)} must have num_stages={num_stages} items')
        if style != 'pytorch':
            raise ValueError("KWResNet supports style='pytorch' only (stride on the 3x3 conv), "
                             'as the released KW models')
        if not out_indices or max(out_indices) >= num_stages or min(out_indices) < 0:
            raise ValueError(f'out_indices {tuple(out_indices)} must lie in [0, {num_stages})')
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f'frozen_stages must be in [-1, {num_stages}], got {frozen_stages}')
        if sharing not in SHARING_RANGES:
            raise ValueError(f'sharing must be one of {SHARING_RANGES}, got {sharing!r}')
        if sharing_dims not in SHARING_DIMS:
            raise ValueError(f'sharing_dims must be one of {SHARING_DIMS}, got {sharing_dims!r}')
        if not kernel_partition and sharing in ('stage', 'block') and sharing_dims != 'exact':
            raise ValueError("kernel_partition=False makes every cell a whole kernel, so a "
                             "warehouse can only hold kernels of one shape: set "
                             f"sharing_dims='exact' or sharing='layer' (got sharing={sharing!r}, "
                             f"sharing_dims={sharing_dims!r})")
        self.sharing = sharing
        self.sharing_dims = sharing_dims
        self.depth = depth
        self.num_stages = num_stages
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.zero_init_residual = zero_init_residual
        block, stage_blocks = self.arch_settings[depth]
        self.block = block
        self.stage_blocks = stage_blocks[:num_stages]

        self.warehouse_manager = None if budget is None else WarehouseManager(
            budget=budget, reduction=reduction, nonlocal_basis_ratio=nonlocal_basis_ratio,
            attention_norm='BN', attention_init=attention_init,
            attention_function=attention_function, kernel_partition=kernel_partition,
            recompute_kernels=recompute_kernels,
            share_cells=sharing != 'none')
        self.conv1 = nn.Conv2d(in_channels, stem_channels, stem_kernel_size, stride=stem_stride,
                               padding=stem_kernel_size // 2, bias=False)
        self.bn1 = build_norm_layer(norm_cfg, stem_channels)[1]
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = (nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
                        if stem_pool else nn.Identity())

        total_blocks = sum(self.stage_blocks)
        dpr = torch.linspace(0, drop_path_rate, total_blocks).tolist()
        channels = stem_channels
        self.res_layers: List[str] = []
        for stage, num_blocks in enumerate(self.stage_blocks):
            out_channels = base_channels * 2**stage * block.expansion
            layer = self._make_layer(stage, channels, out_channels, num_blocks, strides[stage],
                                     norm_cfg, dpr[:num_blocks], with_cp)
            dpr = dpr[num_blocks:]
            name = f'layer{stage + 1}'
            self.add_module(name, layer)
            self.res_layers.append(name)
            channels = out_channels
        self.feat_dim = channels
        if self.warehouse_manager is not None:
            self.warehouse_manager.build(self)
        self._freeze_stages()

    def _conv_cfg(self, warehouse_stage: int, block: str, conv: str,
                  shape: Tuple[int, int, int]) -> Optional[dict]:
        """``conv_cfg`` of the conv ``{block}.{conv}`` (e.g. ``layer2.0``, ``conv1``) of weight
        shape ``(out, in, k)`` whose (Table 15) warehouse stage is ``warehouse_stage``: a normal
        conv for a stage before the first (and everywhere when KW is off), else a KW conv in
        the warehouse that ``sharing`` and ``sharing_dims`` select."""
        if warehouse_stage < 0 or self.warehouse_manager is None:
            return None
        block_stage = int(block[len('layer'):].split('.')[0]) - 1
        if self.sharing == 'stage':
            name = f'stage{warehouse_stage}'
        elif self.sharing in ('layer', 'none') or warehouse_stage != block_stage:
            # One warehouse per conv; in 'block' mode a conv reassigned to the previous stage
            # also forms one of its own, as with the release's sharing_range=('conv',).
            name = f'{block}.{conv}'
        else:
            name = block
        if self.sharing_dims == 'same':
            # the release's per-position names: the downsample conv is its block's 'conv0'
            name += '_' + ('conv1' if conv == 'downsample' else conv)
        elif self.sharing_dims == 'exact':
            out_ch, in_ch, k = shape
            name += f'_{out_ch}x{in_ch}x{k}x{k}'
        return kw_conv_cfg(self.warehouse_manager, name)

    def _make_layer(self, stage: int, in_channels: int, out_channels: int, num_blocks: int,
                    stride: int, norm_cfg: dict, dpr: Sequence[float],
                    with_cp: bool) -> nn.Sequential:
        previous = stage - 1  # Table 15: entry convs join the previous stage's warehouse
        layer = f'layer{stage + 1}'
        downsample = None
        if stride != 1 or in_channels != out_channels:
            # Only a strided downsample is a KW conv in the release.
            ds_cfg = (self._conv_cfg(previous, f'{layer}.0', 'downsample',
                                     (out_channels, in_channels, 1)) if stride != 1 else None)
            downsample = nn.Sequential(
                build_conv_layer(ds_cfg, in_channels, out_channels, 1, stride=stride,
                                 bias=False),
                build_norm_layer(norm_cfg, out_channels)[1])
        blocks = []
        for index in range(num_blocks):
            block = f'{layer}.{index}'
            block_in = in_channels if index == 0 else out_channels
            if self.block is KWBasicBlock:
                first = max(previous, 0) if index == 0 else stage
                conv_cfgs = [
                    self._conv_cfg(first, block, 'conv1', (out_channels, block_in, 3)),
                    self._conv_cfg(stage, block, 'conv2', (out_channels, out_channels, 3))]
            else:
                first = previous if index == 0 else stage
                mid = out_channels // self.block.expansion
                conv_cfgs = [self._conv_cfg(first, block, 'conv1', (mid, block_in, 1)),
                             self._conv_cfg(stage, block, 'conv2', (mid, mid, 3)),
                             self._conv_cfg(stage, block, 'conv3', (out_channels, mid, 1))]
            blocks.append(self.block(in_channels if index == 0 else out_channels, out_channels,
                                     stride if index == 0 else 1, conv_cfgs,
                                     downsample if index == 0 else None, norm_cfg, dpr[index],
                                     with_cp))
        return nn.Sequential(*blocks)

    def init_weights(self) -> None:
        super().init_weights()
        if isinstance(self.init_cfg, dict) and self.init_cfg.get('type') == 'Pretrained':
            return
        if self.zero_init_residual:
            for module in self.modules():
                if isinstance(module, (KWBasicBlock, KWBottleneck)):
                    nn.init.zeros_(module.last_norm.weight)

    def _frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        modules = [self.conv1, self.bn1]
        modules += [getattr(self, self.res_layers[i]) for i in range(self.frozen_stages)]
        return modules

    def _freeze_stages(self) -> None:
        freeze_stages(self._frozen_modules(), self.warehouse_manager)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i, name in enumerate(self.res_layers):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)

    def train(self, mode: bool = True) -> 'KWResNet':
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            batch_norms_to_eval(self)
        return self


@MODELS.register_module()
class KWResNet_CIFAR(KWResNet):
    """KWResNet for small inputs (CIFAR, digits): 3x3 stride-1 stem conv, no max-pool, as
    mmpretrain's ``ResNet_CIFAR``. Same arguments as :class:`KWResNet`; its weights load into
    a ``KWResNet(stem_kernel_size=3)`` (e.g. a detector backbone)."""

    def __init__(self, depth: int, stem_kernel_size: int = 3, stem_stride: int = 1,
                 stem_pool: bool = False, **kwargs) -> None:
        super().__init__(depth, stem_kernel_size=stem_kernel_size, stem_stride=stem_stride,
                         stem_pool=stem_pool, **kwargs)
