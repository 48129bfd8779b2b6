"""MobileNetV2 for every dynamic conv method, with mmpretrain's and mmdet's interface.

:class:`DynamicMobileNetV2` takes the method as ``conv_cfg`` (see :mod:`mmkw.models.conv_methods`):
KW (paper §4.1 Table 4, A.3, Table 14; its six KW stages and three warehouse layouts are
described in :mod:`mmkw.models.conv_methods.kw`), ODConv and DY-Conv. Each conv is described to
the method by its role (``'stem'``, ``'expand'``, ``'depthwise'``, ``'project'``, ``'last'``), its
layer (0-6; the stem -1) and its sharing layer: the entry block of a layer is handed to the
previous layer, as ResNet's Table 15 does, and the last 1x1 conv (``conv2``) to the last layer.

Module and parameter names are mmpretrain's ``MobileNetV2`` (``conv1``, ``layer{i}.{j}.conv.{k}``,
``conv2``; each conv unit has ``conv``, ``bn``, ``activate``), so with ``conv_cfg=None`` this is
mmpretrain's network and loads its checkpoints. :class:`KWMobileNetV2` is the same backbone with
KW's options as arguments.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn import build_activation_layer, build_conv_layer, build_norm_layer
from mmengine.model import BaseModule
from mmengine.registry import MODELS

from ..conv_methods import ConvMethodLike
from ..conv_methods.kw import MOBILENET_KW_STAGES
from ..conv_methods.kw import MOBILENET_LAYOUTS as LAYOUTS  # noqa: F401 (re-export)
from .utils import DynamicBackbone


def make_divisible(value: float, divisor: int = 8, min_ratio: float = 0.9) -> int:
    """Round channels to a multiple of ``divisor`` without losing more than 10% (the rule of
    the TF MobileNet, torchvision, mmpretrain, mmdet and the release)."""
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new_value + divisor if new_value < min_ratio * value else new_value


class KWConvModule(nn.Module):
    """conv -> norm -> activation, with the attribute names of mmcv's ``ConvModule``
    (``conv``, ``bn``, ``activate``) so that state dicts match mmpretrain's MobileNetV2.

    The conv is built from ``conv_cfg`` (static or dynamic), or given as ``conv`` (a KernelDNA
    child). mmcv's ``ConvModule`` itself cannot hold a dynamic conv: it reads ``transposed`` and
    ``weight`` from its conv.
    """

    def __init__(self, conv_cfg: Optional[dict], in_channels: int, out_channels: int,
                 kernel_size: int, stride: int = 1, groups: int = 1,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: Optional[dict] = dict(type='ReLU6'),
                 conv: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv = conv if conv is not None else build_conv_layer(
            conv_cfg, in_channels, out_channels, kernel_size, stride=stride,
            padding=kernel_size // 2, groups=groups, bias=False)
        self.norm_name, norm = build_norm_layer(norm_cfg, out_channels)
        self.add_module(self.norm_name, norm)
        self.activate = build_activation_layer(act_cfg) if act_cfg is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = getattr(self, self.norm_name)(self.conv(x))
        return x if self.activate is None else self.activate(x)


class KWInvertedResidual(BaseModule):
    """MobileNetV2 block: 1x1 expansion (absent when ``expand_ratio == 1``) -> 3x3 depthwise
    -> 1x1 linear reduction, with a residual when shape allows.

    ``conv_cfgs`` holds the conv configs of (expansion, depthwise, reduction); the submodules
    are created in this order, which is the order in which the convs take their cells.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: float,
                 conv_cfgs: Sequence[Optional[dict]], norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='ReLU6'), with_cp: bool = False,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if stride not in (1, 2):
            raise ValueError(f'stride must be 1 or 2, got {stride}')
        self.stride = stride
        self.with_cp = with_cp
        self.use_res_connect = stride == 1 and in_channels == out_channels
        hidden = int(round(in_channels * expand_ratio))
        layers = []
        if expand_ratio != 1:
            layers.append(KWConvModule(conv_cfgs[0], in_channels, hidden, 1, norm_cfg=norm_cfg,
                                       act_cfg=act_cfg))
        layers.append(KWConvModule(conv_cfgs[1], hidden, hidden, 3, stride=stride, groups=hidden,
                                   norm_cfg=norm_cfg, act_cfg=act_cfg))
        layers.append(KWConvModule(conv_cfgs[2], hidden, out_channels, 1, norm_cfg=norm_cfg,
                                   act_cfg=None))
        self.conv = nn.Sequential(*layers)

    def _inner_forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._inner_forward, x, use_reentrant=False)
        return self._inner_forward(x)


@MODELS.register_module()
class DynamicMobileNetV2(DynamicBackbone):
    """MobileNetV2 backbone whose convs follow a dynamic conv method.

    Same interface as mmdet's / mmpretrain's ``MobileNetV2``, plus ``conv_cfg``.

    Args:
        widen_factor: channel multiplier.
        conv_cfg: the conv method, e.g. ``dict(type='KW', budget='1x')`` (layouts: see
            :class:`~mmkw.models.conv_methods.KW`), ``dict(type='ODConv', kernel_num=4)``,
            ``dict(type='DyConv')``, ``dict(type='KWStar', budget='4x')``; None: plain.
        out_indices: outputs to return, 0-6 for ``layer1``-``layer7`` and 7 for ``conv2``.
        frozen_stages: -1 freezes nothing, 0 the stem (``conv1``), k the stem and ``layer1``..
            ``layer{k}``, with the shared parameters they use (KW: their warehouses; convs of
            later layers that share one keep trainable attentions over its cells).
        norm_cfg: norm of the conv units.
        act_cfg: activation of the conv units (ReLU6).
        norm_eval: keep every BatchNorm (the attentions' included) in eval mode while training.
        with_cp: gradient checkpointing of the blocks.
        init_cfg: mmengine init config; ``dict(type='Pretrained', checkpoint=..., prefix=...)``
            loads weights. Non-pretrained inits keep the methods' attention init.

    Forward: ``[B, 3, H, W]`` -> tuple of the ``out_indices`` feature maps; for widen factor 1.0,
    ``layer1``..``layer7``, ``conv2`` have 16, 24, 32, 64, 96, 160, 320, 1280 channels at
    strides 2, 4, 8, 16, 16, 32, 32, 32.
    """

    # expand ratio t, channels c, blocks n, stride s of the seven layers
    arch_settings = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
                     [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
    # KW stage of each layer in the release (kept here for existing imports)
    kw_stages = MOBILENET_KW_STAGES

    def __init__(self,
                 widen_factor: float = 1.0,
                 conv_cfg: ConvMethodLike = None,
                 out_indices: Sequence[int] = (7, ),
                 frozen_stages: int = -1,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='ReLU6'),
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 init_cfg=(dict(type='Kaiming', layer=['Conv2d']),
                           dict(type='Constant', val=1, layer=['_BatchNorm', 'GroupNorm']))):
        super().__init__(init_cfg=list(init_cfg) if isinstance(init_cfg, tuple) else init_cfg)
        if not out_indices or not set(out_indices) <= set(range(8)):
            raise ValueError(f'out_indices {tuple(out_indices)} must be a non-empty subset of '
                             'range(0, 8) (layer1-layer7, conv2)')
        if frozen_stages not in range(-1, 8):
            raise ValueError(f'frozen_stages must be in range(-1, 8), got {frozen_stages}')
        self.widen_factor = widen_factor
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        method = self.setup_method(conv_cfg, 'mobilenet_v2')
        self.layout = getattr(method, 'layout', None)

        channels = make_divisible(32 * widen_factor, 8)
        self.conv1 = KWConvModule(
            self.site_cfg('stem', 'conv1', -1, (channels, 3, 3), stride=2, share_stage=-1),
            3, channels, 3, stride=2, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.layers: List[str] = []
        for i, (expand_ratio, c, num_blocks, stride) in enumerate(self.arch_settings):
            out_channels = make_divisible(c * widen_factor, 8)
            blocks = []
            for j in range(num_blocks):
                hidden = int(round(channels * expand_ratio))
                block_stride = stride if j == 0 else 1
                name = f'layer{i + 1}.{j}.conv'
                convs = {'expand': (hidden, channels, 1, 1, 1),
                         'depthwise': (hidden, hidden, 3, hidden, block_stride),
                         'project': (out_channels, hidden, 1, 1, 1)}
                if expand_ratio == 1:
                    del convs['expand']
                conv_cfgs = [
                    self.site_cfg(role, f'{name}.{k}', i, shape[:3], groups=shape[3],
                                  stride=shape[4], share_stage=i - 1 if j == 0 and i > 0 else i,
                                  block=j, num_blocks=num_blocks)
                    for k, (role, shape) in enumerate(convs.items())]
                if expand_ratio == 1:
                    conv_cfgs.insert(0, None)
                blocks.append(KWInvertedResidual(channels, out_channels, block_stride,
                                                 expand_ratio, conv_cfgs, norm_cfg, act_cfg,
                                                 with_cp))
                channels = out_channels
            name = f'layer{i + 1}'
            self.add_module(name, nn.Sequential(*blocks))
            self.layers.append(name)
        self.out_channel = int(1280 * widen_factor) if widen_factor > 1.0 else 1280
        last = len(self.arch_settings) - 1
        self.conv2 = KWConvModule(
            self.site_cfg('last', 'conv2', last, (self.out_channel, channels, 1)),
            channels, self.out_channel, 1, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.layers.append('conv2')
        self.feat_dim = self.out_channel
        self.finish_method()

    def frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.conv1] + [getattr(self, f'layer{i}')
                               for i in range(1, self.frozen_stages + 1)]

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        x = self.conv1(x)
        outs = []
        for i, name in enumerate(self.layers):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)


@MODELS.register_module()
class KWMobileNetV2(DynamicMobileNetV2):
    """MobileNetV2 with Kernel Warehouse convolutions: a :class:`DynamicMobileNetV2` with
    ``conv_cfg=dict(type='KW', ...)`` from these arguments. The release's models:
    ``budget='1x'``, ``'4x'`` and ``'1/2x'`` (each with its own layout) at ``widen_factor`` 1.0
    and 0.5.

    Args:
        widen_factor: channel multiplier.
        budget: convolutional parameter budget b (paper §3.3); None builds mmpretrain's plain
            MobileNetV2 (same structure and parameter names). In the ``'dw_last_pw'`` layout
            it is the budget of the stage-6 pointwise warehouses only.
        layout: ``'pw_dw'``, ``'expand_dw_linear'``, ``'dw_last_pw'``, or None for the
            release's choice by budget (see :class:`~mmkw.models.conv_methods.KW`).
        reduction: attention hidden width ratio; None takes the release's: 1/32 in the
            ``'dw_last_pw'`` layout, 1/16 otherwise.
        attention_init: 'one_to_one' (A.2) or None (tau held at 0, fine-tuning); Table 13's
            'all_to_one', 'n_to_one', 'one_to_n'.
        attention_function: 'caf' (Eq. 4) or Table 8's 'softmax', 'sigmoid', 'relu_norm'.
        recompute_kernels: True, False or 'auto' (see :class:`~mmkw.ops.WarehouseManager`).
        freeze_warehouses: with ``frozen_stages``, also freeze the warehouses of the frozen
            layers (True); False keeps them trainable, as the release's detection fine-tuning.
        **kwargs: the arguments of :class:`DynamicMobileNetV2` but ``conv_cfg``.
    """

    def __init__(self,
                 widen_factor: float = 1.0,
                 budget='1x',
                 layout: Optional[str] = None,
                 reduction: Optional[float] = None,
                 attention_init: Optional[str] = 'one_to_one',
                 attention_function: str = 'caf',
                 recompute_kernels: Union[bool, str] = 'auto',
                 freeze_warehouses: bool = True,
                 **kwargs) -> None:
        if 'conv_cfg' in kwargs:
            raise TypeError('KWMobileNetV2 takes the KW options as arguments (budget=..., ...); '
                            'use DynamicMobileNetV2 for conv_cfg')
        if budget is None and layout is not None:
            raise ValueError(f'KWMobileNetV2: layout={layout!r} needs a budget (budget=None is '
                             'the plain network)')
        conv_cfg = None if budget is None else dict(
            type='KW', budget=budget, layout=layout, reduction=reduction,
            attention_init=attention_init, attention_function=attention_function,
            recompute_kernels=recompute_kernels, freeze_warehouses=freeze_warehouses)
        super().__init__(widen_factor, conv_cfg=conv_cfg, **kwargs)
        if budget is None:
            self.warehouse_manager = None


@MODELS.register_module()
class ODConvMobileNetV2(DynamicMobileNetV2):
    """MobileNetV2 with ODConv everywhere but the stem: ``DynamicMobileNetV2`` with
    ``conv_cfg=dict(type='ODConv', kernel_num=kernel_num, ...)``."""

    def __init__(self, widen_factor: float = 1.0, kernel_num: int = 4,
                 reduction: Optional[float] = None, attention_function: str = 'softmax',
                 **kwargs) -> None:
        cfg = dict(type='ODConv', kernel_num=kernel_num, attention_function=attention_function)
        if reduction is not None:
            cfg['reduction'] = reduction
        super().__init__(widen_factor, conv_cfg=cfg, **kwargs)


@MODELS.register_module()
class DyConvMobileNetV2(DynamicMobileNetV2):
    """MobileNetV2 with DY-Conv everywhere but the stem: ``DynamicMobileNetV2`` with
    ``conv_cfg=dict(type='DyConv', kernel_num=kernel_num, ...)``."""

    def __init__(self, widen_factor: float = 1.0, kernel_num: int = 4,
                 reduction: Optional[float] = None, attention_function: str = 'softmax',
                 **kwargs) -> None:
        cfg = dict(type='DyConv', kernel_num=kernel_num, attention_function=attention_function)
        if reduction is not None:
            cfg['reduction'] = reduction
        super().__init__(widen_factor, conv_cfg=cfg, **kwargs)
