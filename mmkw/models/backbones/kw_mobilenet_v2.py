"""MobileNetV2 with Kernel Warehouse convolutions (paper §4.1 Table 4, A.3, Table 14).

Warehouse sharing follows the release. The seven inverted-residual layers (mmdet's and
mmpretrain's ``layer1`` .. ``layer7``) form six *KW stages* ``(1, 2, 3, 4, 5, 6, 6)``: the 160-
and 320-channel layers share stage 6. As for ResNet (Table 15), the first block of a layer that
opens a new KW stage is handed over to the previous one, so a KW stage is "its layers minus their
entry block, plus the entry block of the next layer". The stem conv has its own warehouse and the
last 1x1 conv (``conv2``, 320 -> 1280) joins the pointwise convs of stage 6. Three layouts:

- ``'pw_dw'`` (the release's KW 1x): per KW stage one warehouse for the pointwise convs
  (expansion and reduction together) and one for the depthwise convs; 13 warehouses.
- ``'expand_dw_linear'`` (the release's KW 4x): per KW stage three warehouses: depthwise,
  expansion pointwise, reduction ("linear") pointwise; 19 warehouses.
- ``'dw_last_pw'`` (the release's KW 1/2x): the stem and every depthwise conv are KW convs at
  b = 1 with whole gcd cells; only the pointwise convs of KW stage 6 are KW convs (expansion and
  reduction in two warehouses) at ``budget``; all other pointwise convs are normal convs. The
  release also shrinks the attentions (reduction 1/32) and makes the classifier a KW layer
  (cells 1000 x 32, b = 1/2), which :class:`~mmkw.models.heads.KWLinearClsHead` provides.
  A.3's text gives b the other way round (1 for pointwise, 1/2 elsewhere); its Table 14 and
  the release's checkpoints have b = 1/2 on the pointwise convs and the classifier.

Warehouses are numbered in order of first use, as in the release (in stage 1 the depthwise
warehouse comes first: the first block has no expansion conv).

Module and parameter names are mmpretrain's ``MobileNetV2`` (``conv1``, ``layer{i}.{j}.conv.{k}``,
``conv2``; each conv unit has ``conv``, ``bn``, ``activate``), so with ``budget=None`` this is
mmpretrain's network and loads its checkpoints.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn import build_activation_layer, build_conv_layer, build_norm_layer
from mmengine.model import BaseModule
from mmengine.registry import MODELS

from mmkw.ops import Budget, WarehouseManager
from .utils import (batch_norms_to_eval, freeze_stages, kw_conv_cfg,
                    reset_kw_attentions)

LAYOUTS = ('pw_dw', 'expand_dw_linear', 'dw_last_pw')


def make_divisible(value: float, divisor: int = 8, min_ratio: float = 0.9) -> int:
    """Round channels to a multiple of ``divisor`` without losing more than 10% (the rule of
    the TF MobileNet, torchvision, mmpretrain, mmdet and the release)."""
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new_value + divisor if new_value < min_ratio * value else new_value


class KWConvModule(nn.Module):
    """conv -> norm -> activation, with the attribute names of mmcv's ``ConvModule``
    (``conv``, ``bn``, ``activate``) so that state dicts match mmpretrain's MobileNetV2.

    mmcv's ``ConvModule`` itself cannot hold a KW conv: it reads ``transposed`` and ``weight``
    from its conv.
    """

    def __init__(self, conv_cfg: Optional[dict], in_channels: int, out_channels: int,
                 kernel_size: int, stride: int = 1, groups: int = 1,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: Optional[dict] = dict(type='ReLU6')) -> None:
        super().__init__()
        self.conv = build_conv_layer(conv_cfg, in_channels, out_channels, kernel_size,
                                     stride=stride, padding=kernel_size // 2, groups=groups,
                                     bias=False)
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
class KWMobileNetV2(BaseModule):
    """MobileNetV2 backbone with Kernel Warehouse convolutions.

    Same interface as mmdet's / mmpretrain's ``MobileNetV2``, plus the KW options. The release's
    models: ``budget='1x'``, ``'4x'`` and ``'1/2x'`` (each with its own layout, see the module
    docstring) at ``widen_factor`` 1.0 and 0.5.

    Args:
        widen_factor: channel multiplier.
        budget: convolutional parameter budget b (paper §3.3): '1/2x', '1x', '4x', any
            '<ratio>x', a number, or a dict of the three cell ratios; None builds mmpretrain's
            plain MobileNetV2 (same structure and parameter names). In the ``'dw_last_pw'``
            layout it is the budget of the stage-6 pointwise warehouses only.
        layout: warehouse sharing, one of ``'pw_dw'``, ``'expand_dw_linear'``, ``'dw_last_pw'``;
            None takes the release's choice: ``'dw_last_pw'`` for a 1/2x budget,
            ``'expand_dw_linear'`` for b > 1, ``'pw_dw'`` otherwise.
        reduction: attention hidden width ratio; None takes the release's: 1/32 in the
            ``'dw_last_pw'`` layout, 1/16 otherwise.
        attention_init: 'one_to_one' (paper A.2; tau schedules apply) or None to disable the
            init strategy, holding tau at 0 (fine-tuning, A.1.2); the
            ablations of Table 13: 'all_to_one', 'n_to_one' (b > 1), 'one_to_n' (b < 1).
        attention_function: 'caf' (Eq. 4) or Table 8's 'softmax', 'sigmoid', 'relu_norm'.
        recompute_kernels: assemble large per-sample kernels again in the backward pass
            instead of keeping them (True, False or 'auto'; see
            :class:`~mmkw.ops.WarehouseManager`): far less training memory for one more
            assembly per conv.
        out_indices: outputs to return, 0-6 for ``layer1``-``layer7`` and 7 for ``conv2``.
        frozen_stages: -1 freezes nothing, 0 the stem (``conv1``), k the stem and ``layer1``..
            ``layer{k}``; the warehouses their KW convs draw from are frozen with them, so that
            the frozen part computes a fixed function (convs of later layers that share such a
            warehouse keep trainable attentions over its cells).
        norm_cfg: norm of the conv units.
        act_cfg: activation of the conv units (ReLU6).
        norm_eval: keep all BatchNorm layers (the attentions' BatchNorm1d included) in eval
            mode while training.
        with_cp: gradient checkpointing of the blocks.
        init_cfg: mmengine init config; ``dict(type='Pretrained', checkpoint=..., prefix=...)``
            loads weights. Non-pretrained inits keep the release's attention init.

    Forward: ``[B, 3, H, W]`` -> tuple of the ``out_indices`` feature maps; for widen factor 1.0,
    ``layer1``..``layer7``, ``conv2`` have 16, 24, 32, 64, 96, 160, 320, 1280 channels at
    strides 2, 4, 8, 16, 16, 32, 32, 32.
    """

    # expand ratio t, channels c, blocks n, stride s of the seven layers
    arch_settings = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
                     [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
    # KW stage of each layer in the release; the last two layers share one
    kw_stages = (1, 2, 3, 4, 5, 6, 6)

    def __init__(self,
                 widen_factor: float = 1.0,
                 budget='1x',
                 layout: Optional[str] = None,
                 reduction: Optional[float] = None,
                 attention_init: Optional[str] = 'one_to_one',
                 attention_function: str = 'caf',
                 recompute_kernels: Union[bool, str] = 'auto',
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

        if budget is None:
            self.layout = None
            self.warehouse_manager = None
        else:
            if layout is None:
                b = Budget.parse(budget)
                layout = ('dw_last_pw' if b == Budget.parse('1/2x') else
                          'expand_dw_linear' if b.b > 1 else 'pw_dw')
            if layout not in LAYOUTS:
                raise ValueError(f'layout must be one of {LAYOUTS} or None, got {layout!r}')
            if reduction is None:
                reduction = 1 / 32 if layout == 'dw_last_pw' else 1 / 16
            self.layout = layout
            self.warehouse_manager = WarehouseManager(
                budget=budget, reduction=reduction, attention_norm='BN',
                attention_init=attention_init, attention_function=attention_function,
                recompute_kernels=recompute_kernels)

        channels = make_divisible(32 * widen_factor, 8)
        # the stem has its own warehouse (whole gcd cells, b = 1 in the 'dw_last_pw' layout)
        stem_budget = '1x' if self.layout == 'dw_last_pw' else None
        self.conv1 = KWConvModule(self._conv_cfg('stem', stem_budget), 3, channels, 3, stride=2,
                                  norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.layers: List[str] = []
        for i, (expand_ratio, c, num_blocks, stride) in enumerate(self.arch_settings):
            out_channels = make_divisible(c * widen_factor, 8)
            blocks = []
            for j in range(num_blocks):
                stage = self.kw_stages[i]
                if j == 0 and i > 0 and self.kw_stages[i - 1] != stage:
                    stage = self.kw_stages[i - 1]  # the entry block joins the previous stage
                blocks.append(KWInvertedResidual(
                    channels, out_channels, stride if j == 0 else 1, expand_ratio,
                    self._block_conv_cfgs(stage), norm_cfg, act_cfg, with_cp))
                channels = out_channels
            name = f'layer{i + 1}'
            self.add_module(name, nn.Sequential(*blocks))
            self.layers.append(name)
        self.out_channel = int(1280 * widen_factor) if widen_factor > 1.0 else 1280
        self.conv2 = KWConvModule(self._block_conv_cfgs(self.kw_stages[-1])[2], channels,
                                  self.out_channel, 1, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.layers.append('conv2')
        self.feat_dim = self.out_channel
        if self.warehouse_manager is not None:
            self.warehouse_manager.build(self)
        self._freeze_stages()

    def _conv_cfg(self, warehouse: str, budget=None) -> Optional[dict]:
        return kw_conv_cfg(self.warehouse_manager, warehouse, budget)

    def _block_conv_cfgs(self, stage: int) -> Tuple[Optional[dict], ...]:
        """Conv configs of (expansion, depthwise, reduction) for a block of KW stage ``stage``;
        index 2 is also the config of ``conv2`` for the last stage."""
        if self.layout is None:
            return None, None, None
        if self.layout == 'pw_dw':
            pw = self._conv_cfg(f'stage{stage}_pw')
            return pw, self._conv_cfg(f'stage{stage}_dw'), pw
        if self.layout == 'expand_dw_linear':
            return (self._conv_cfg(f'stage{stage}_expand'), self._conv_cfg(f'stage{stage}_dw'),
                    self._conv_cfg(f'stage{stage}_linear'))
        # 'dw_last_pw': depthwise convs always KW with whole gcd cells and b = 1; pointwise
        # convs KW (at the manager's budget) only in the last KW stage
        dw = self._conv_cfg(f'stage{stage}_dw', budget='1x')
        if stage != self.kw_stages[-1]:
            return None, dw, None
        return (self._conv_cfg(f'stage{stage}_expand'), dw,
                self._conv_cfg(f'stage{stage}_linear'))

    def init_weights(self) -> None:
        super().init_weights()
        if isinstance(self.init_cfg, dict) and self.init_cfg.get('type') == 'Pretrained':
            return
        reset_kw_attentions(self)

    def _frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.conv1] + [getattr(self, f'layer{i}')
                               for i in range(1, self.frozen_stages + 1)]

    def _freeze_stages(self) -> None:
        freeze_stages(self._frozen_modules(), self.warehouse_manager)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        x = self.conv1(x)
        outs = []
        for i, name in enumerate(self.layers):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)

    def train(self, mode: bool = True) -> 'KWMobileNetV2':
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            batch_norms_to_eval(self)
        return self
