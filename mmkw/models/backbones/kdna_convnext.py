"""ConvNeXt with KernelDNA child convolutions: mmkw's design (the release advertises a
ConvNeXt-Tiny but contains no code for it).

Design, by the principle of the release's MobileNetV2 (``kdna_mobilenet_v2.py``): there, every
layer of at least three blocks becomes ``[transition, n children, parent]`` with
``n = blocks - 2``, the children deriving both pointwise (1x1) kernels from the parent block's and
keeping their own depthwise convs and norms. A ConvNeXt block is the same kind of block (7x7
depthwise conv, then two pointwise convs, ``C -> 4C -> C``) and every ConvNeXt stage has at least
three blocks, so every stage ``i`` becomes

- block 0: an unchanged ConvNeXt block (the stage's entry, right after its downsampling layer);
- blocks ``1 .. n_i``: child blocks: ``pointwise_conv1`` and ``pointwise_conv2`` are KernelDNA
  children of the last block's (filter modulation only, as 1x1 kernels have no spatial term),
  with an SE gate on each input (reduction 4 on C, 24 on the 4C expanded channels, as the
  release's reductions on C and 6C), and their own depthwise conv, LayerNorm, layer scale and
  pointwise biases (a child's bias is its own, like its norm);
- block ``n_i + 1``: the parent, an unchanged ConvNeXt block.

Depthwise convs are never shared (as in the release). The default ``n_kids`` is ``depth - 2``
per stage, which keeps the architecture's depths: (1, 1, 7, 1) for Tiny, (1, 1, 25, 1) for Small
and Base; ``n = 0`` keeps a stage plain (then it has ``depths[i]`` blocks), otherwise a stage has
``n + 2`` blocks. Parameters with a 1000-class head: ConvNeXt-T 28,589,128 -> KernelDNA 18,343,096
(Small 50,223,688 -> 23,684,920, Base 88,591,464 -> 41,318,804); see ``docs/kerneldna.md``.

The unchanged blocks are mmpretrain's (channels-last ``nn.Linear`` pointwise convs, names
``downsample_layers``, ``stages.{i}.{j}.{depthwise_conv, norm, pointwise_conv1,
pointwise_conv2, gamma}``, ``norm{i}``), so plain mmpretrain ConvNeXt checkpoints map by name. A
child block runs channels-first, its children being 1x1 convs whose kernels are the parent's
``nn.Linear`` weights. A stage's stacked static terms are ``stages.{i}.statics_pw1`` and
``stages.{i}.statics_pw2`` (``static_filter_attn [n, 4C | C, 1, 1, 1]``).
"""
import copy
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule
from mmengine.registry import MODELS

from mmkw.ops.kerneldna import KDNAChildConv2d, KDNAStage, KDNAStaticTerms
from .convnext import LayerNorm2d
from .kdna_resnet import KDNABackbone


class KDNAConvNeXtBlock(BaseModule):
    """ConvNeXt block (mmpretrain names): 7x7 depthwise conv -> LayerNorm -> pointwise conv
    (x mlp_ratio) -> GELU -> pointwise conv -> layer scale -> drop path + residual.

    Args:
        in_channels: channels of the block.
        pointwise_convs: None for mmpretrain's channels-last ``nn.Linear`` pointwise convs, or
            two given 1x1 convs on ``[B, C, H, W]`` (KernelDNA children).
        mlp_ratio: expansion of the first pointwise conv.
        drop_path_rate: stochastic depth of this block.
        layer_scale_init_value: initial layer scale (0 disables it).
        with_cp: gradient checkpointing.
    """

    def __init__(self, in_channels: int,
                 pointwise_convs: Optional[Tuple[nn.Module, nn.Module]] = None,
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.0,
                 layer_scale_init_value: float = 1e-6, with_cp: bool = False,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.with_cp = with_cp
        mid_channels = int(mlp_ratio * in_channels)
        self.depthwise_conv = nn.Conv2d(in_channels, in_channels, 7, padding=3,
                                        groups=in_channels)
        self.norm = LayerNorm2d(in_channels, eps=1e-6)
        self.linear_pw_conv = pointwise_convs is None
        if self.linear_pw_conv:
            self.pointwise_conv1 = nn.Linear(in_channels, mid_channels)
        else:
            self.pointwise_conv1 = pointwise_convs[0]
        self.act = nn.GELU()
        if self.linear_pw_conv:
            self.pointwise_conv2 = nn.Linear(mid_channels, in_channels)
        else:
            self.pointwise_conv2 = pointwise_convs[1]
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(in_channels)) \
            if layer_scale_init_value > 0 else None
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def _inner_forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.depthwise_conv(x)
        if self.linear_pw_conv:
            x = self.norm(x.permute(0, 2, 3, 1), data_format='channel_last')
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
class KDNAConvNeXt(KDNABackbone):
    """ConvNeXt (v1) backbone with KernelDNA child blocks (mmkw's design; see the module
    docstring). Interface of mmpretrain's ``ConvNeXt``.

    Args:
        arch: 'tiny', 'small', 'base', or a dict with ``depths`` and ``channels``.
        n_kids: children per stage (``n + 2`` blocks; 0 keeps the stage plain with its
            ``depths`` blocks). Default: ``depth - 2`` per stage, the arch's depths.
        gate_reductions: SE reduction on the C and the expanded channels ((4, 24)).
        gate_norm_cfg: norm of the SE gates (BatchNorm, as the release's gates; ``dict(type='GN',
            num_groups=1)`` works on one sample per device).
        in_channels: image channels.
        stem_patch_size: the stem's patchify conv (4).
        mlp_ratio: pointwise expansion (4).
        drop_path_rate: stochastic depth, rising linearly over the blocks to this value.
        layer_scale_init_value: initial layer scale (1e-6).
        out_indices: stages whose (normed) outputs are returned; -1 is the last.
        frozen_stages: stages (with their downsampling layers) to freeze (0: none).
        gap_before_final_norm: pool before the output norms (classification) or not
            (detection: feature maps).
        norm_eval: keep the gates' BatchNorms in eval mode while training.
        with_cp: gradient checkpointing of the blocks.
        init_cfg: mmengine init config (mmpretrain's ConvNeXt init by default);
            ``dict(type='KDNAFromPlain', checkpoint=...)`` starts from a plain mmpretrain
            ConvNeXt (same names; children take their parents' kernels).

    Forward: ``[B, 3, H, W]`` -> tuple of the ``out_indices`` outputs: ``[B, C_i]`` with
    ``gap_before_final_norm``, else ``[B, C_i, H / 2**(i+2), W / 2**(i+2)]``.
    """

    arch_settings = {
        'tiny': {'depths': [3, 3, 9, 3], 'channels': [96, 192, 384, 768]},
        'small': {'depths': [3, 3, 27, 3], 'channels': [96, 192, 384, 768]},
        'base': {'depths': [3, 3, 27, 3], 'channels': [128, 256, 512, 1024]},
    }
    default_init_cfg = [dict(type='TruncNormal', layer=['Conv2d', 'Linear'], std=.02, bias=0.),
                        dict(type='Constant', layer=['LayerNorm'], val=1., bias=0.)]

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 n_kids: Optional[Sequence[int]] = None,
                 gate_reductions: Tuple[int, int] = (4, 24),
                 gate_norm_cfg: dict = dict(type='BN'),
                 in_channels: int = 3,
                 stem_patch_size: int = 4,
                 mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.0,
                 layer_scale_init_value: float = 1e-6,
                 out_indices: Union[int, Sequence[int]] = -1,
                 frozen_stages: int = 0,
                 gap_before_final_norm: bool = True,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=copy.deepcopy(self.default_init_cfg)
                         if init_cfg is None else init_cfg)
        if isinstance(arch, str):
            if arch not in self.arch_settings:
                raise ValueError(f'unknown arch {arch!r} for KDNAConvNeXt, choose from '
                                 f'{sorted(self.arch_settings)} or give a dict of depths and '
                                 'channels')
            arch = self.arch_settings[arch]
        elif not ({'depths', 'channels'} <= set(arch)
                  and len(arch['depths']) == len(arch['channels'])):
            raise ValueError('a custom arch needs "depths" and "channels" of equal length, got '
                             f'{arch}')
        depths, channels = list(arch['depths']), list(arch['channels'])
        num_stages = len(depths)
        n_kids = tuple(max(d - 2, 0) for d in depths) if n_kids is None else tuple(n_kids)
        if len(n_kids) != num_stages or any(n < 0 for n in n_kids):
            raise ValueError(f'KDNAConvNeXt: n_kids needs {num_stages} numbers >= 0 (children '
                             f'per stage; 0 keeps a stage plain), got {n_kids}')
        out_indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
        out_indices = [i + num_stages if i < 0 else i for i in out_indices]
        if not out_indices or not all(0 <= i < num_stages for i in out_indices):
            raise ValueError(f'out_indices must lie in [-{num_stages}, {num_stages}), got '
                             f'{out_indices}')
        if not 0 <= frozen_stages <= num_stages:
            raise ValueError(f'frozen_stages must be in [0, {num_stages}], got {frozen_stages}')
        self.depths = [n + 2 if n else d for n, d in zip(n_kids, depths)]
        self.channels = channels
        self.n_kids = n_kids
        self.num_stages = num_stages
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.gap_before_final_norm = gap_before_final_norm
        self.norm_eval = norm_eval

        dpr = torch.linspace(0, drop_path_rate, sum(self.depths)).tolist()
        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(nn.Sequential(
            nn.Conv2d(in_channels, channels[0], stem_patch_size, stem_patch_size),
            LayerNorm2d(channels[0], eps=1e-6)))
        self.stages = nn.ModuleList()
        for i in range(num_stages):
            if i > 0:
                self.downsample_layers.append(nn.Sequential(
                    LayerNorm2d(channels[i - 1], eps=1e-6),
                    nn.Conv2d(channels[i - 1], channels[i], 2, 2)))
            rates, dpr = dpr[:self.depths[i]], dpr[self.depths[i]:]
            block = dict(mlp_ratio=mlp_ratio, layer_scale_init_value=layer_scale_init_value,
                         with_cp=with_cp)
            if n_kids[i] == 0:
                stage = nn.Sequential(*[KDNAConvNeXtBlock(channels[i], drop_path_rate=rate,
                                                          **block) for rate in rates])
            else:
                stage = self._kdna_stage(channels[i], n_kids[i], rates, block, gate_reductions,
                                         gate_norm_cfg)
            self.stages.append(stage)
            if i in self.out_indices:
                self.add_module(f'norm{i}', LayerNorm2d(channels[i], eps=1e-6))
        self.feat_dim = channels[-1]
        self._freeze_stages()

    @staticmethod
    def _kdna_stage(channels: int, n_kids: int, rates: List[float], block: dict,
                    gate_reductions: Tuple[int, int], gate_norm_cfg: dict) -> KDNAStage:
        parent = KDNAConvNeXtBlock(channels, drop_path_rate=rates[-1], **block)
        mid = parent.pointwise_conv1.out_features
        terms1 = KDNAStaticTerms(n_kids, mid)
        terms2 = KDNAStaticTerms(n_kids, channels)
        blocks: List[nn.Module] = [KDNAConvNeXtBlock(channels, drop_path_rate=rates[0], **block)]
        for i in range(n_kids):
            pw1 = KDNAChildConv2d(channels, mid, 1, bias=True, parent=parent.pointwise_conv1,
                                  static_terms=terms1, index=i,
                                  gate_reduction=gate_reductions[0], gate_norm_cfg=gate_norm_cfg)
            pw2 = KDNAChildConv2d(mid, channels, 1, bias=True, parent=parent.pointwise_conv2,
                                  static_terms=terms2, index=i,
                                  gate_reduction=gate_reductions[1], gate_norm_cfg=gate_norm_cfg)
            blocks.append(KDNAConvNeXtBlock(channels, (pw1, pw2), drop_path_rate=rates[i + 1],
                                            **block))
        blocks.append(parent)
        return KDNAStage(blocks, dict(statics_pw1=terms1, statics_pw2=terms2))

    def frozen_modules(self) -> List[nn.Module]:
        return [module for i in range(self.frozen_stages)
                for module in (self.downsample_layers[i], self.stages[i])]

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

    def plain_key(self, key: str) -> Optional[str]:
        """Adapter-init source of ``key`` in mmpretrain's plain ConvNeXt: the same name (a child
        block keeps the plain block's depthwise conv, norm, layer scale and pointwise biases;
        its pointwise kernels are the parent's), None for the gates and static terms."""
        return None if self._fresh_kdna_key(key) else key
