"""MobileNetV2 with KernelDNA child convolutions, in the layout of the official release.

The release (``models/KDNA_MobileNetV2.py``; ``../shared/notes/kerneldna_format.md`` §2) turns each
of the four layers of torchvision's MobileNetV2 that have at least three blocks (mmpretrain's
``layer3``..``layer6``: 32, 64, 96, 160 channels at widen 1.0) into a ``ShareCluster``:

- block 0, the *transition*: the layer's first inverted residual, unchanged (stride, no
  shortcut);
- blocks 1..n, the *children*: inverted residuals whose two pointwise convs are KernelDNA
  children of the last block's (filter modulation only: 1x1 kernels have no spatial term), each
  with its own depthwise conv and norms and an SE gate on each pointwise input (reduction 4 on
  the C channels, 24 on the 6C expanded ones);
- block n + 1, the *parent*: an unchanged inverted residual with shortcut.

With the release's ``n_kids = (1, 2, 1, 1)`` the layers keep torchvision's block counts
(3, 4, 3, 3); the release empties the other ``features`` entries of a layer to keep indices,
which changes nothing here. mmkw writes every layer with mmpretrain's names (``conv1``,
``layer{l}.{b}.conv.{u}.{conv,bn}``, ``conv2``); a child block's ``conv.0.conv`` and
``conv.2.conv`` are the children (``.gate.*``: their SE gates), and a layer's stacked static
terms are ``layer{l}.statics_expand.static_filter_attn [n, 6C, 1, 1, 1]`` (the release's
``static_filter_attn1``) and ``layer{l}.statics_reduce.static_filter_attn [n, C, 1, 1, 1]``
(``static_filter_attn3``).

The release builds torchvision's model with ``dropout=0``; mmpretrain's ``LinearClsHead`` has
no dropout either, so the configs' classifier is the release's.
"""
import copy
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from mmengine.registry import MODELS

from mmkw.ops.kerneldna import KDNAChildConv2d, KDNAStage, KDNAStaticTerms
from .kdna_resnet import KDNABackbone
from .mobilenet_v2 import KWConvModule, make_divisible


class KDNAInvertedResidual(BaseModule):
    """MobileNetV2 block (mmpretrain names): 1x1 expansion (absent for ``expand_ratio == 1``)
    -> 3x3 depthwise -> 1x1 linear reduction, shortcut when stride 1 and shapes agree. The
    pointwise convs may be given (KernelDNA children)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: float,
                 expand_conv: Optional[nn.Module] = None,
                 reduce_conv: Optional[nn.Module] = None, norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='ReLU6'), with_cp: bool = False,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if stride not in (1, 2):
            raise ValueError(f'stride must be 1 or 2, got {stride}')
        self.with_cp = with_cp
        self.use_res_connect = stride == 1 and in_channels == out_channels
        hidden = int(round(in_channels * expand_ratio))
        layers = []
        if expand_ratio != 1:
            layers.append(KWConvModule(None, in_channels, hidden, 1, conv=expand_conv,
                                       norm_cfg=norm_cfg, act_cfg=act_cfg))
        layers.append(KWConvModule(None, hidden, hidden, 3, stride, groups=hidden,
                                   norm_cfg=norm_cfg, act_cfg=act_cfg))
        layers.append(KWConvModule(None, hidden, out_channels, 1, conv=reduce_conv,
                                   norm_cfg=norm_cfg, act_cfg=None))
        self.conv = nn.Sequential(*layers)

    def _inner_forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._inner_forward, x, use_reentrant=False)
        return self._inner_forward(x)


def kdna_inverted_residual_stage(in_channels: int, out_channels: int, stride: int, n_kids: int,
                                 expand_ratio: float = 6, norm_cfg: dict = dict(type='BN'),
                                 act_cfg: dict = dict(type='ReLU6'),
                                 gate_reductions: Tuple[int, int] = (4, 24),
                                 gate_norm_cfg: dict = dict(type='BN'), with_cp: bool = False,
                                 name: str = 'stage') -> KDNAStage:
    """The release's ``ShareCluster``: transition, ``n_kids`` child blocks, parent block (see
    the module docstring). ``gate_reductions``: SE reduction on the C and the expanded channels.

    Forward: ``[B, in_channels, H, W]`` -> ``[B, out_channels, H / stride, W / stride]``.
    """
    if n_kids < 1:
        raise ValueError(f'{name}: a KernelDNA MobileNetV2 layer needs n_kids >= 1 (transition, '
                         f'children, parent), got {n_kids}')
    hidden = int(round(out_channels * expand_ratio))
    parent = KDNAInvertedResidual(out_channels, out_channels, 1, expand_ratio, norm_cfg=norm_cfg,
                                  act_cfg=act_cfg, with_cp=with_cp)
    expand_terms = KDNAStaticTerms(n_kids, hidden)
    reduce_terms = KDNAStaticTerms(n_kids, out_channels)
    blocks: List[nn.Module] = [KDNAInvertedResidual(in_channels, out_channels, stride,
                                                    expand_ratio, norm_cfg=norm_cfg,
                                                    act_cfg=act_cfg, with_cp=with_cp)]
    for i in range(n_kids):
        expand = KDNAChildConv2d(out_channels, hidden, 1, parent=parent.conv[0].conv,
                                 static_terms=expand_terms, index=i,
                                 gate_reduction=gate_reductions[0], gate_norm_cfg=gate_norm_cfg)
        reduce = KDNAChildConv2d(hidden, out_channels, 1, parent=parent.conv[2].conv,
                                 static_terms=reduce_terms, index=i,
                                 gate_reduction=gate_reductions[1], gate_norm_cfg=gate_norm_cfg)
        blocks.append(KDNAInvertedResidual(out_channels, out_channels, 1, expand_ratio, expand,
                                           reduce, norm_cfg, act_cfg, with_cp))
    blocks.append(parent)
    return KDNAStage(blocks, dict(statics_expand=expand_terms, statics_reduce=reduce_terms))


@MODELS.register_module()
class KDNAMobileNetV2(KDNABackbone):
    """MobileNetV2 backbone with KernelDNA children (the release's layout, see the module
    docstring). Interface of mmpretrain's / mmdet's ``MobileNetV2``.

    Args:
        widen_factor: channel multiplier (the release: 1.0 and 0.5).
        n_kids: children of ``layer3``..``layer6``; a layer has ``n + 2`` blocks. Default: the
            release's ``(1, 2, 1, 1)``.
        gate_reductions: SE reduction on the C and the 6C expanded channels ((4, 24)).
        gate_norm_cfg: norm of the SE gates (BatchNorm as the release).
        out_indices: outputs to return, 0-6 for ``layer1``-``layer7`` and 7 for ``conv2``.
        frozen_stages: -1 freezes nothing, 0 the stem (``conv1``), k the stem and
            ``layer1..layer{k}``.
        norm_cfg, act_cfg: norm and activation of the conv units (BN, ReLU6).
        norm_eval: keep every BatchNorm (the gates' included) in eval mode while training.
        with_cp: gradient checkpointing of the blocks.
        init_cfg: mmengine init config; ``Pretrained`` for KernelDNA checkpoints,
            ``dict(type='KDNAFromPlain', checkpoint=...)`` for a plain MobileNetV2 (mmpretrain
            or torchvision names): every module takes the plain weights of the same name, the
            children's kernels are their parents' (static terms 0) and the gates are fresh.

    Forward: ``[B, 3, H, W]`` -> tuple of the ``out_indices`` feature maps; for widen factor
    1.0, ``layer1``..``layer7``, ``conv2`` have 16, 24, 32, 64, 96, 160, 320, 1280 channels at
    strides 2, 4, 8, 16, 16, 32, 32, 32.
    """

    # expand ratio t, channels c, blocks n, stride s of the seven layers (torchvision's)
    arch_settings = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
                     [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
    # the layers the release turns into ShareClusters (1-based), with its children
    kdna_layers = (3, 4, 5, 6)
    release_n_kids = (1, 2, 1, 1)
    default_init_cfg = [dict(type='Kaiming', layer=['Conv2d']),
                        dict(type='Constant', val=1, layer=['_BatchNorm', 'GroupNorm'])]

    def __init__(self,
                 widen_factor: float = 1.0,
                 n_kids: Optional[Sequence[int]] = None,
                 gate_reductions: Tuple[int, int] = (4, 24),
                 gate_norm_cfg: dict = dict(type='BN'),
                 out_indices: Sequence[int] = (7, ),
                 frozen_stages: int = -1,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='ReLU6'),
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=copy.deepcopy(self.default_init_cfg)
                         if init_cfg is None else init_cfg)
        if not out_indices or not set(out_indices) <= set(range(8)):
            raise ValueError(f'out_indices {tuple(out_indices)} must be a non-empty subset of '
                             'range(0, 8) (layer1-layer7, conv2)')
        if frozen_stages not in range(-1, 8):
            raise ValueError(f'frozen_stages must be in range(-1, 8), got {frozen_stages}')
        n_kids = tuple(self.release_n_kids if n_kids is None else n_kids)
        if len(n_kids) != len(self.kdna_layers):
            raise ValueError(f'KDNAMobileNetV2: n_kids gives the children of layer3..layer6, four '
                             f'numbers; got {n_kids}')
        self.widen_factor = widen_factor
        self.n_kids = n_kids
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval

        channels = make_divisible(32 * widen_factor, 8)
        self.conv1 = KWConvModule(None, 3, channels, 3, 2, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.layers: List[str] = []
        for i, (expand_ratio, c, num_blocks, stride) in enumerate(self.arch_settings):
            out_channels = make_divisible(c * widen_factor, 8)
            name = f'layer{i + 1}'
            if i + 1 in self.kdna_layers:
                layer = kdna_inverted_residual_stage(
                    channels, out_channels, stride, n_kids[self.kdna_layers.index(i + 1)],
                    expand_ratio, norm_cfg, act_cfg, gate_reductions, gate_norm_cfg, with_cp,
                    name=f'KDNAMobileNetV2 {name} ({out_channels} channels)')
            else:
                layer = nn.Sequential(*[
                    KDNAInvertedResidual(channels if j == 0 else out_channels, out_channels,
                                         stride if j == 0 else 1, expand_ratio,
                                         norm_cfg=norm_cfg, act_cfg=act_cfg, with_cp=with_cp)
                    for j in range(num_blocks)])
            self.add_module(name, layer)
            self.layers.append(name)
            channels = out_channels
        self.out_channel = int(1280 * widen_factor) if widen_factor > 1.0 else 1280
        self.conv2 = KWConvModule(None, channels, self.out_channel, 1, norm_cfg=norm_cfg,
                                  act_cfg=act_cfg)
        self.layers.append('conv2')
        self.feat_dim = self.out_channel
        self._freeze_stages()

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

    def plain_key(self, key: str) -> Optional[str]:
        """Adapter-init source of ``key`` in mmpretrain's plain MobileNetV2: the same name (a
        child block keeps the plain block's depthwise conv and norms; its pointwise kernels are
        the parent block's, so the plain block's own pointwise weights go unused), None for the
        gates and static terms."""
        return None if self._fresh_kdna_key(key) else key
