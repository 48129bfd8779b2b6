"""ResNet with Kernel Warehouse convolutions (paper §4, A.3, Tables 14-15).

Warehouse sharing follows the release: one warehouse per *reassigned* stage. The first block
of stage ``s`` (0-based) puts its first conv and its strided downsample conv into warehouse
``s - 1`` (Table 15), so a warehouse is shared by all convs of its stage plus the entry convs
of the next one. The stem is a normal conv; in stage 0 a Bottleneck's first 1x1 conv and the
stride-1 downsample stay normal convs.

Freezing (``frozen_stages = k``): the stem, stages ``1..k`` and the warehouses ``0..k-1`` they
draw their cells from are frozen, so the frozen stages compute a fixed function. The entry
convs of stage ``k + 1`` keep trainable attentions over the frozen cells of warehouse ``k-1``.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn import build_conv_layer, build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule
from mmengine.registry import MODELS

from mmkw.ops import WarehouseManager
from .utils import batch_norms_to_eval, freeze_stages, kw_conv_cfg


def _conv_cfg(manager: Optional[WarehouseManager], stage: int) -> Optional[dict]:
    """A KW conv in warehouse ``stage``, or a normal conv for a stage before the first (and
    everywhere when KW is off)."""
    return None if stage < 0 else kw_conv_cfg(manager, f'stage{stage}')


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
            init strategy, holding tau at 0 (fine-tuning, A.1.2).
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
            attention_norm='BN', attention_init=attention_init)
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

    def _make_layer(self, stage: int, in_channels: int, out_channels: int, num_blocks: int,
                    stride: int, norm_cfg: dict, dpr: Sequence[float],
                    with_cp: bool) -> nn.Sequential:
        manager = self.warehouse_manager
        previous = stage - 1  # Table 15: entry convs join the previous stage's warehouse
        downsample = None
        if stride != 1 or in_channels != out_channels:
            # Only a strided downsample is a KW conv in the release.
            ds_cfg = _conv_cfg(manager, previous) if stride != 1 else None
            downsample = nn.Sequential(
                build_conv_layer(ds_cfg, in_channels, out_channels, 1, stride=stride,
                                 bias=False),
                build_norm_layer(norm_cfg, out_channels)[1])
        blocks = []
        for index in range(num_blocks):
            if self.block is KWBasicBlock:
                first = max(previous, 0) if index == 0 else stage
                conv_cfgs = [_conv_cfg(manager, first), _conv_cfg(manager, stage)]
            else:
                first = previous if index == 0 else stage
                conv_cfgs = [_conv_cfg(manager, first), _conv_cfg(manager, stage),
                             _conv_cfg(manager, stage)]
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
