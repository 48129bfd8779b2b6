"""ConvNeXt for the dynamic conv methods that apply to it (KW and KW*), with mmpretrain's
interface: :class:`DynamicConvNeXt` takes the method as ``conv_cfg``, :class:`KWConvNeXt` takes
KW's options as arguments (paper §4.1 Table 2, A.3, Table 14).

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

from ..conv_methods import ConvMethodLike
from .utils import DynamicBackbone


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
class DynamicConvNeXt(DynamicBackbone):
    """ConvNeXt backbone whose convs follow a dynamic conv method.

    Same interface as mmpretrain's ``ConvNeXt`` (v1), plus ``conv_cfg``.

    Args:
        arch: 'tiny', 'small', 'base', 'large', 'xlarge', or a dict with ``depths`` and
            ``channels``.
        conv_cfg: the conv method: ``dict(type='KW', budget='1x', layout='release')`` (see
            :class:`~mmkw.models.conv_methods.KW` for the layouts, ``warehouse_groups`` and
            '3/4x') or ``dict(type='KWStar', ...)``; None builds mmpretrain's plain ConvNeXt
            (same structure and parameter names; pointwise convs as channels-last linears).
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
                 conv_cfg: ConvMethodLike = None,
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
                raise KeyError(f'invalid arch {arch!r} for {type(self).__name__}, choose from '
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
        if not 0 <= frozen_stages <= self.num_stages:
            raise ValueError(f'frozen_stages must be in [0, {self.num_stages}], '
                             f'got {frozen_stages}')
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.gap_before_final_norm = gap_before_final_norm
        method = self.setup_method(conv_cfg, 'convnext', depths=self.depths)
        self.layout = getattr(method, 'layout', None)
        self.warehouse_groups = getattr(method, 'warehouse_groups', None)

        # The release reserves the stem and the three downsampling convs before the blocks, so
        # their warehouses come first; the module order is mmpretrain's either way.
        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(nn.Sequential(
            build_conv_layer(
                self.site_cfg('stem', 'downsample_layers.0.0', -1,
                              (self.channels[0], in_channels, stem_patch_size),
                              stride=stem_patch_size),
                in_channels, self.channels[0], stem_patch_size, stride=stem_patch_size,
                bias=True),
            LayerNorm2d(self.channels[0], eps=1e-6)))
        for i in range(1, self.num_stages):
            self.downsample_layers.append(nn.Sequential(
                LayerNorm2d(self.channels[i - 1], eps=1e-6),
                build_conv_layer(
                    self.site_cfg('downsample', f'downsample_layers.{i}.1', i,
                                  (self.channels[i], self.channels[i - 1], 2), stride=2),
                    self.channels[i - 1], self.channels[i], 2, stride=2, bias=True)))

        dpr = torch.linspace(0, drop_path_rate, sum(self.depths)).tolist()
        self.stages = nn.ModuleList()
        for i, (depth, channels) in enumerate(zip(self.depths, self.channels)):
            blocks = []
            for j in range(depth):
                block = f'stages.{i}.{j}'
                conv_cfgs = (
                    self.site_cfg('depthwise', f'{block}.depthwise_conv', i,
                                  (channels, channels, 7), groups=channels, block=j,
                                  num_blocks=depth),
                    self.site_cfg('pointwise', f'{block}.pointwise_conv', i,
                                  (channels, channels, 1), block=j, num_blocks=depth))
                blocks.append(KWConvNeXtBlock(channels, conv_cfgs, drop_path_rate=dpr[j],
                                              layer_scale_init_value=layer_scale_init_value,
                                              with_cp=with_cp))
            dpr = dpr[depth:]
            self.stages.append(nn.Sequential(*blocks))
        for i in self.out_indices:
            self.add_module(f'norm{i}', LayerNorm2d(self.channels[i], eps=1e-6))
        self.feat_dim = self.channels[-1]
        self.finish_method()

    def frozen_modules(self) -> List[nn.Module]:
        return [m for i in range(self.frozen_stages)
                for m in (self.downsample_layers[i], self.stages[i])]

    def get_layer_depth(self, param_name: str, prefix: str = '') -> Tuple[int, int]:
        """Layer id for layer-wise lr decay, as mmpretrain's ``ConvNeXt.get_layer_depth`` (the
        rule of :func:`~mmkw.engine.optimizers.layer_decay.convnext_layer_id`: stem 0, the
        stage-3 blocks in groups of three). Shared KW warehouses take the id of their first
        conv, so no conv learns faster than the cells it draws from (the release's detection
        constructor, which knows names only, puts them at the top instead).

        Args:
            param_name: parameter name, with ``prefix`` (e.g. ``'backbone.'``).
            prefix: the prefix of the backbone's parameters.
        """
        from mmkw.engine.optimizers.layer_decay import convnext_layer_id
        max_layer_id = 12 if self.depths[-2] > 9 else 6
        if not param_name.startswith(prefix):
            return max_layer_id + 1, max_layer_id + 2
        name = param_name[len(prefix):]
        if name.startswith('warehouse_manager.weights.'):
            index = int(name.split('.')[2])
            users = list(self.warehouse_manager.specs.values())[index].conv_names
            name = users[0] + '.weight' if users else name
        return convnext_layer_id('backbone.' + name, max_layer_id), max_layer_id + 2

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


@MODELS.register_module()
class KWConvNeXt(DynamicConvNeXt):
    """ConvNeXt with Kernel Warehouse convolutions: a :class:`DynamicConvNeXt` with
    ``conv_cfg=dict(type='KW', ...)`` from these arguments.

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
            init strategy, holding tau at 0 (fine-tuning, A.1.2); the ablations of Table 13.
        attention_function: 'caf' (Eq. 4) or Table 8's 'softmax', 'sigmoid', 'relu_norm'.
        recompute_kernels: True, False or 'auto' (see :class:`~mmkw.ops.WarehouseManager`).
        **kwargs: the arguments of :class:`DynamicConvNeXt` but ``conv_cfg``.
    """

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 budget='1x',
                 layout: str = 'release',
                 warehouse_groups: Optional[Sequence[int]] = None,
                 reduction: Optional[float] = None,
                 attention_init: Optional[str] = 'one_to_one',
                 attention_function: str = 'caf',
                 recompute_kernels: Union[bool, str] = 'auto',
                 **kwargs) -> None:
        if 'conv_cfg' in kwargs:
            raise TypeError('KWConvNeXt takes the KW options as arguments (budget=..., ...); '
                            'use DynamicConvNeXt for conv_cfg')
        if layout not in ('release', 'paper'):
            raise ValueError(f"layout must be 'release' or 'paper', got {layout!r}")
        conv_cfg = None if budget is None else dict(
            type='KW', budget=budget, layout=layout, warehouse_groups=warehouse_groups,
            reduction=reduction, attention_init=attention_init,
            attention_function=attention_function, recompute_kernels=recompute_kernels)
        super().__init__(arch, conv_cfg=conv_cfg, **kwargs)
        if budget is None:
            self.warehouse_manager = None
            self.layout = layout
