"""ConvNeXt with Kernel Warehouse convolutions (paper §4.1 Table 2, A.3, Table 14).

Every conv is a KW conv in the release: the 4x4 stem conv and the three 2x2 downsampling convs
(one warehouse each, reserved first: 16, 4, 4, 4 cells for ConvNeXt-Tiny at 1x), and in each
stage the 7x7 depthwise convs (one warehouse) and both pointwise convs of every block (one more
warehouse). The attentions use LayerNorm (``fc1`` with a bias) instead of BatchNorm, and every
conv keeps its bias, as in ConvNeXt.

``warehouse_groups`` splits a stage into consecutive groups of blocks with their own pair of
warehouses. Two layouts:

- ``'release'``: one group per stage (12 warehouses for Tiny: 16, 4, 4, 4, 147, 24, 147, 24,
  441, 72, 147, 24) and attention reduction 1/16: KW (1x) ConvNeXt-Tiny has 39.37M parameters
  with a 1000-class head, the release's model.
- ``'paper'``: the third stage split into three groups of equal depth (Table 14: 16
  warehouses, 16, 4, 4, 4, then 147, 24 six times) and attention reduction 1/32. This gives
  exactly the paper's Table 2 sizes, 32.99M for KW (1x) and 24.53M for KW (3/4x); the paper does
  not state the reduction, but 1/16 gives 35.92M and 27.82M, and 1/32 is the reduction of the
  release's lightest model (KW 1/2x MobileNetV2).

``budget='3/4x'`` is the paper's KW (3/4x): the pointwise warehouses of the last two groups get
half-size cells and b = 1/2 (A.3), everything else is KW (1x).

The KW pointwise convs are 1x1 KW convs on ``[B, C, H, W]`` (as in the release), with the block
norm applied over channels in place. Names follow mmpretrain's ``ConvNeXt``
(``downsample_layers``, ``stages.{i}.{j}.{depthwise_conv, norm, pointwise_conv1,
pointwise_conv2, gamma}``, ``norm{i}``); with ``budget=None`` the pointwise convs are
channels-last ``nn.Linear`` layers and the network is mmpretrain's ConvNeXt, checkpoints
included.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn import build_conv_layer
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule
from mmengine.registry import MODELS

from mmkw.ops import Budget, WarehouseManager
from .utils import freeze_stages, kw_conv_cfg, reset_kw_attentions


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of ``[B, C, H, W]`` (``data_format='channel_first'``) or of
    a channels-last ``[B, H, W, C]`` tensor, as mmpretrain's ``LN2d``."""

    def forward(self, x: torch.Tensor, data_format: str = 'channel_first') -> torch.Tensor:
        if data_format == 'channel_last':
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        if data_format != 'channel_first':
            raise ValueError(f"data_format must be 'channel_first' or 'channel_last', got "
                             f'{data_format!r}')
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class KWConvNeXtBlock(BaseModule):
    """ConvNeXt block: 7x7 depthwise conv -> LayerNorm -> 1x1 conv (x4) -> GELU -> 1x1 conv ->
    layer scale -> drop path + residual.

    Args:
        in_channels: channels of the block.
        conv_cfgs: conv configs of (depthwise conv, pointwise convs); a None pointwise config
            builds channels-last ``nn.Linear`` layers (mmpretrain's default).
        mlp_ratio: expansion of the first pointwise conv.
        drop_path_rate: stochastic depth of this block.
        layer_scale_init_value: initial layer scale (0 disables it).
        with_cp: gradient checkpointing.
    """

    def __init__(self, in_channels: int, conv_cfgs: Sequence[Optional[dict]],
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.0,
                 layer_scale_init_value: float = 1e-6, with_cp: bool = False,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.with_cp = with_cp
        mid_channels = int(mlp_ratio * in_channels)
        self.depthwise_conv = build_conv_layer(conv_cfgs[0], in_channels, in_channels, 7,
                                               padding=3, groups=in_channels, bias=True)
        self.norm = LayerNorm2d(in_channels, eps=1e-6)
        self.linear_pw_conv = conv_cfgs[1] is None
        if self.linear_pw_conv:
            self.pointwise_conv1 = nn.Linear(in_channels, mid_channels)
        else:
            self.pointwise_conv1 = build_conv_layer(conv_cfgs[1], in_channels, mid_channels, 1,
                                                    bias=True)
        self.act = nn.GELU()
        if self.linear_pw_conv:
            self.pointwise_conv2 = nn.Linear(mid_channels, in_channels)
        else:
            self.pointwise_conv2 = build_conv_layer(conv_cfgs[1], mid_channels, in_channels, 1,
                                                    bias=True)
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(in_channels)) \
            if layer_scale_init_value > 0 else None
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def _inner_forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.depthwise_conv(x)
        if self.linear_pw_conv:
            x = x.permute(0, 2, 3, 1)
            x = self.norm(x, data_format='channel_last')
            x = self.pointwise_conv2(self.act(self.pointwise_conv1(x)))
            x = x.permute(0, 3, 1, 2)
        else:
            x = self.norm(x, data_format='channel_first')
            x = self.pointwise_conv2(self.act(self.pointwise_conv1(x)))
        if self.gamma is not None:
            x = x * self.gamma.view(1, -1, 1, 1)
        return shortcut + self.drop_path(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._inner_forward, x, use_reentrant=False)
        return self._inner_forward(x)


@MODELS.register_module()
class KWConvNeXt(BaseModule):
    """ConvNeXt backbone with Kernel Warehouse convolutions.

    Same interface as mmpretrain's ``ConvNeXt`` (v1), plus the KW options.

    Args:
        arch: 'tiny', 'small', 'base', 'large', 'xlarge', or a dict with ``depths`` and
            ``channels``.
        budget: convolutional parameter budget b (paper §3.3): '1x' (the release), '3/4x' (the
            paper's mixed design, see the module docstring), '1/2x', '2x', '4x', any
            '<ratio>x', a number, or a dict of the three cell ratios. None builds mmpretrain's
            plain ConvNeXt (same structure and parameter names).
        layout: 'release' or 'paper' (see the module docstring): the defaults of
            ``warehouse_groups`` and ``reduction``.
        warehouse_groups: per stage, how many consecutive groups of blocks get their own
            depthwise and pointwise warehouses; each must divide the stage's depth. None: one
            per stage ('release'), three in the third stage ('paper', Table 14).
        reduction: attention hidden width ratio; None: 1/16 ('release') or 1/32 ('paper').
        attention_init: 'one_to_one' (paper A.2; tau schedules apply) or None to disable the
            init strategy, holding tau at 0 (fine-tuning, A.1.2); the
            ablations of Table 13: 'all_to_one', 'n_to_one' (b > 1), 'one_to_n' (b < 1).
        attention_function: 'caf' (Eq. 4) or Table 8's 'softmax', 'sigmoid', 'relu_norm'.
        recompute_kernels: assemble large per-sample kernels again in the backward pass
            instead of keeping them (True, False or 'auto'; see
            :class:`~mmkw.ops.WarehouseManager`): far less training memory for one more
            assembly per conv.
        in_channels: input image channels.
        stem_patch_size: kernel and stride of the stem conv.
        drop_path_rate: stochastic depth, rising linearly over the blocks to this value.
        layer_scale_init_value: initial layer scale (0 disables it).
        out_indices: stages whose outputs are returned (negative counts from the end); each
            gets its own LayerNorm ``norm{i}``.
        frozen_stages: freeze ``downsample_layers[i]`` and ``stages[i]`` for ``i < frozen_stages``
            together with the warehouses their KW convs draw from.
        gap_before_final_norm: average-pool each output before its norm (classification,
            ``[B, C]`` outputs); False returns normed feature maps (detection).
        with_cp: gradient checkpointing of the blocks.
        init_cfg: mmengine init config; non-pretrained inits keep the release's attention and
            warehouse init.

    Forward: ``[B, in_channels, H, W]`` -> tuple, per ``out_indices`` stage ``i``, of
    ``[B, channels[i], H / 2**(i+2), W / 2**(i+2)]`` maps (``[B, channels[i]]`` with
    ``gap_before_final_norm``).
    """

    arch_settings = {
        'tiny': dict(depths=[3, 3, 9, 3], channels=[96, 192, 384, 768]),
        'small': dict(depths=[3, 3, 27, 3], channels=[96, 192, 384, 768]),
        'base': dict(depths=[3, 3, 27, 3], channels=[128, 256, 512, 1024]),
        'large': dict(depths=[3, 3, 27, 3], channels=[192, 384, 768, 1536]),
        'xlarge': dict(depths=[3, 3, 27, 3], channels=[256, 512, 1024, 2048]),
    }

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 budget='1x',
                 layout: str = 'release',
                 warehouse_groups: Optional[Sequence[int]] = None,
                 reduction: Optional[float] = None,
                 attention_init: Optional[str] = 'one_to_one',
                 attention_function: str = 'caf',
                 recompute_kernels: Union[bool, str] = 'auto',
                 in_channels: int = 3,
                 stem_patch_size: int = 4,
                 drop_path_rate: float = 0.0,
                 layer_scale_init_value: float = 1e-6,
                 out_indices: Union[int, Sequence[int]] = -1,
                 frozen_stages: int = 0,
                 gap_before_final_norm: bool = True,
                 with_cp: bool = False,
                 init_cfg=(dict(type='TruncNormal', layer=['Conv2d', 'Linear'], std=.02,
                                bias=0.),
                           dict(type='Constant', layer=['LayerNorm'], val=1., bias=0.))):
        super().__init__(init_cfg=list(init_cfg) if isinstance(init_cfg, tuple) else init_cfg)
        if isinstance(arch, str):
            if arch not in self.arch_settings:
                raise KeyError(f'invalid arch {arch!r} for KWConvNeXt, choose from '
                               f'{sorted(self.arch_settings)} or give a dict')
            arch = self.arch_settings[arch]
        elif not (isinstance(arch, dict) and {'depths', 'channels'} <= set(arch)):
            raise ValueError(f'arch dict must have "depths" and "channels", got {arch}')
        self.depths = list(arch['depths'])
        self.channels = list(arch['channels'])
        if len(self.depths) != len(self.channels):
            raise ValueError(f'depths {self.depths} and channels {self.channels} differ in length')
        self.num_stages = len(self.depths)
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        out_indices = [i + self.num_stages if i < 0 else i for i in out_indices]
        if not out_indices or min(out_indices) < 0 or max(out_indices) >= self.num_stages:
            raise ValueError(f'out_indices {out_indices} must lie in [0, {self.num_stages})')
        if layout not in ('release', 'paper'):
            raise ValueError(f"layout must be 'release' or 'paper', got {layout!r}")
        if warehouse_groups is None:
            warehouse_groups = [1] * self.num_stages
            if layout == 'paper' and self.num_stages > 2:
                warehouse_groups[2] = 3  # Table 14: the 9 blocks of stage 3 in three groups
        if reduction is None:
            reduction = 1 / 16 if layout == 'release' else 1 / 32
        if len(warehouse_groups) != self.num_stages or any(
                g < 1 or depth % g for g, depth in zip(warehouse_groups, self.depths)):
            raise ValueError(f'warehouse_groups {tuple(warehouse_groups)} needs one positive '
                             f'divisor of each stage depth {self.depths}')
        if not 0 <= frozen_stages <= self.num_stages:
            raise ValueError(f'frozen_stages must be in [0, {self.num_stages}], '
                             f'got {frozen_stages}')
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.gap_before_final_norm = gap_before_final_norm
        self.layout = layout
        self.warehouse_groups = tuple(warehouse_groups)

        # '3/4x' is a mix, not a ratio: 1x everywhere, 1/2x on the last two pointwise groups
        half_last_pw = budget is not None and Budget.parse(budget) == Budget.parse('3/4x')
        self.warehouse_manager = None if budget is None else WarehouseManager(
            budget='1x' if half_last_pw else budget, reduction=reduction,
            attention_norm='LN', attention_init=attention_init,
            attention_function=attention_function,
            recompute_kernels=recompute_kernels)
        groups = [(i, g) for i, n in enumerate(self.warehouse_groups) for g in range(n)]
        half_pw_groups = set(groups[-2:]) if half_last_pw else set()

        # The release reserves the stem and the three downsampling convs before the blocks, so
        # their warehouses come first; the module order is mmpretrain's either way.
        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(nn.Sequential(
            build_conv_layer(self._conv_cfg('stem'), in_channels, self.channels[0],
                             stem_patch_size, stride=stem_patch_size, bias=True),
            LayerNorm2d(self.channels[0], eps=1e-6)))
        for i in range(1, self.num_stages):
            self.downsample_layers.append(nn.Sequential(
                LayerNorm2d(self.channels[i - 1], eps=1e-6),
                build_conv_layer(self._conv_cfg(f'downsample{i}'), self.channels[i - 1],
                                 self.channels[i], 2, stride=2, bias=True)))

        dpr = torch.linspace(0, drop_path_rate, sum(self.depths)).tolist()
        self.stages = nn.ModuleList()
        for i, (depth, channels) in enumerate(zip(self.depths, self.channels)):
            blocks = []
            for j in range(depth):
                group = j * self.warehouse_groups[i] // depth
                name = f'stage{i}' if self.warehouse_groups[i] == 1 else f'stage{i}.{group}'
                pw_budget = '1/2x' if (i, group) in half_pw_groups else None
                conv_cfgs = (self._conv_cfg(f'{name}_dw'), self._conv_cfg(f'{name}_pw', pw_budget))
                blocks.append(KWConvNeXtBlock(channels, conv_cfgs, drop_path_rate=dpr[j],
                                              layer_scale_init_value=layer_scale_init_value,
                                              with_cp=with_cp))
            dpr = dpr[depth:]
            self.stages.append(nn.Sequential(*blocks))
        for i in self.out_indices:
            self.add_module(f'norm{i}', LayerNorm2d(self.channels[i], eps=1e-6))
        self.feat_dim = self.channels[-1]
        if self.warehouse_manager is not None:
            self.warehouse_manager.build(self)
        self._freeze_stages()

    def _conv_cfg(self, warehouse: str, budget=None) -> Optional[dict]:
        return kw_conv_cfg(self.warehouse_manager, warehouse, budget)

    def init_weights(self) -> None:
        super().init_weights()
        if isinstance(self.init_cfg, dict) and self.init_cfg.get('type') == 'Pretrained':
            return
        reset_kw_attentions(self)

    def _frozen_modules(self) -> List[nn.Module]:
        return [m for i in range(self.frozen_stages)
                for m in (self.downsample_layers[i], self.stages[i])]

    def _freeze_stages(self) -> None:
        freeze_stages(self._frozen_modules(), self.warehouse_manager)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(self.downsample_layers[i](x))
            if i in self.out_indices:
                norm = getattr(self, f'norm{i}')
                if self.gap_before_final_norm:
                    outs.append(norm(x.mean([-2, -1], keepdim=True)).flatten(1))
                else:
                    outs.append(norm(x))
        return tuple(outs)

    def train(self, mode: bool = True) -> 'KWConvNeXt':
        super().train(mode)
        self._freeze_stages()
        return self
