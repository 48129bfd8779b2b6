"""ResNet with KernelDNA child convolutions, in the layouts of the official release.

The release (``models/KDNA_ResNet{18,50}.py``; ``../shared/notes/kerneldna_format.md`` §2) keeps
torchvision's stem, ``layer1`` and ``layer2`` and replaces ``layer3`` and ``layer4``. mmkw
writes every stage as a sequence of residual blocks with mmpretrain's names (``layer{s}.{b}``
with ``conv1``, ``bn1``, ``conv2``, ``bn2``[, ``conv3``, ``bn3``], ``downsample.{0,1}``), some of
whose convs are :class:`~mmkw.ops.KDNAChildConv2d` children; the stacked static terms of a stage
are ``layer{s}.statics.static_filter_attn [n, C, 1, 1, 1]`` and
``layer{s}.statics.static_spatial_attn [n, 1, 1, 3, 3]``, and a child's SE gate is
``<child conv>.gate.{fc1, norm, fc2}``. Unchanged stages are mmpretrain's ResNet stages.

Stage layouts (``n_kids`` per KernelDNA stage, ``layer3`` then ``layer4``):

- ``'basic'`` (ResNet-18's ``NewLayer``; depths 18 and 34), ``k = n_kids`` children, ``k``
  basic blocks and ``k - 1`` parents ``P_j``::

      block 0:  conv1 (own, strided) -> child 0 of P_1     (+ downsample shortcut)
      block j:  child j of P_j -> P_j                      (j = 1 .. k - 1)

  ``k = 3`` is the release's six-conv stage (children 0 and 1 of ``conv2``, child 2 of
  ``conv3``; ``P_1 = layer{s}.1.conv2``, ``P_2 = layer{s}.2.conv2``).
- ``'pairs'`` (ResNet-50's ``NewLayer3``): the entry bottleneck, then ``n`` pairs of a child
  bottleneck (its 3x3 conv a child of the next block's) and its parent bottleneck: ``2n + 1``
  blocks; the release's ``n = 3`` gives seven (ResNet-50 has six).
- ``'shared'`` (ResNet-50's ``NewLayer4``): the entry bottleneck, ``n`` child bottlenecks, then
  the parent bottleneck whose 3x3 conv all of them derive from: ``n + 2`` blocks.

Child bottlenecks keep their own 1x1 convs and norms; only their 3x3 kernels are derived.

Depths: 18 and 50 are the release's models (``n_kids`` (3, 3) and (3, 1)). The documented rule
for the others, which reproduces both: BasicBlock ResNets use ``'basic'`` in both stages with
one child more than the plain stage has blocks (``k = d + 1``: 34 -> (7, 4)); Bottleneck ResNets
use ``'pairs'`` with ``d // 2`` pairs in ``layer3`` and ``'shared'`` with ``d - 2`` children in
``layer4`` (101 -> (11, 1), 152 -> (18, 1)), ``d`` being the plain stage's block count.
"""
import copy
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule
from mmengine.registry import MODELS

from mmkw.ops.kerneldna import (KDNAChildConv2d, KDNAGate, KDNAStage, KDNAStaticTerms,
                                fold_static_kernels, unfold_static_kernels)
from .utils import DynamicBackbone

PLAIN_INIT_TYPE = 'KDNAFromPlain'


class KDNABackbone(DynamicBackbone):
    """What the KernelDNA backbones add to the shared backbone behaviour (freezing and
    ``norm_eval``, the SE gates' BatchNorms included, of :class:`DynamicBackbone`): deploy
    folding, and the adapter init from a plain checkpoint
    (``init_cfg=dict(type='KDNAFromPlain', ...)``).

    A subclass sets ``frozen_stages``, ``norm_eval``, lists :meth:`frozen_modules`, and maps its
    state-dict keys to those of its plain counterpart in :meth:`plain_key`.
    """

    frozen_stages: int = -1
    default_init_cfg: List[dict] = []

    # ------------------------------------------------------------------ deploy folding
    def fold_static_kernels(self) -> int:
        """Precompute every child's static kernel ``W * (1 + f) * (1 + s)`` for inference (the
        SE gates stay dynamic); returns the number of children. Undo before training."""
        return fold_static_kernels(self)

    def unfold_static_kernels(self) -> int:
        return unfold_static_kernels(self)

    # ------------------------------------------------------------------ adapter init
    def plain_key(self, key: str) -> Optional[str]:
        """The key of the plain network's state dict (mmpretrain names) that initialises our
        ``key`` in the adapter init, or None for a fresh start (gates, static terms)."""
        raise NotImplementedError

    def _fresh_kdna_key(self, key: str) -> bool:
        """Gates and static terms start fresh; a child's own bias keeps its plain name."""
        path = key.rsplit('.', 1)[0]
        module = self
        for part in path.split('.'):
            module = getattr(module, part, None)
            if isinstance(module, (KDNAGate, KDNAStaticTerms)):
                return True
            if module is None:
                return False
        return False

    @torch.no_grad()
    def _children_start_as_parents(self) -> None:
        # mmengine's inits select layers by class and would leave a child's own bias (ConvNeXt)
        # at its construction value while the parent's is re-initialised.
        for child in self.modules():
            if isinstance(child, KDNAChildConv2d):
                child.static_terms.reset_parameters()
                parent_bias = getattr(child.parent, 'bias', None)
                if child.bias is not None and parent_bias is not None:
                    child.bias.copy_(parent_bias)

    def init_weights(self) -> None:
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else \
            [self.init_cfg] if self.init_cfg else []
        plain = [cfg for cfg in cfgs if cfg.get('type') == PLAIN_INIT_TYPE]
        if not plain:
            super().init_weights()
            if not any(cfg.get('type') == 'Pretrained' for cfg in cfgs):
                self._children_start_as_parents()
            return
        if len(plain) > 1:
            raise ValueError(f'init_cfg has {len(plain)} {PLAIN_INIT_TYPE} entries; give one')
        # The fresh parts (gates, anything the plain network lacks) get the usual init first.
        others = [cfg for cfg in cfgs if cfg.get('type') != PLAIN_INIT_TYPE]
        original = self.init_cfg
        self.init_cfg = others or copy.deepcopy(self.default_init_cfg) or None
        try:
            super().init_weights()
        finally:
            self.init_cfg = original
        from mmkw.converters.kdna_from_plain import init_from_plain
        options = {k: v for k, v in plain[0].items() if k != 'type'}
        if 'checkpoint' not in options:
            raise ValueError(f"init_cfg {PLAIN_INIT_TYPE} needs checkpoint='path or url'")
        init_from_plain(self, **options)


# ---------------------------------------------------------------------------- blocks
class KDNABasicBlock(BaseModule):
    """ResNet basic block (mmpretrain names) whose convs may be given, e.g. KernelDNA children
    or parents built by the stage; missing ones are plain 3x3 convs."""
    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 conv1: Optional[nn.Module] = None, conv2: Optional[nn.Module] = None,
                 downsample: Optional[nn.Module] = None, norm_cfg: dict = dict(type='BN'),
                 with_cp: bool = False, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.with_cp = with_cp
        self.conv1 = conv1 if conv1 is not None else nn.Conv2d(
            in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = build_norm_layer(norm_cfg, out_channels)[1]
        self.conv2 = conv2 if conv2 is not None else nn.Conv2d(
            out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = build_norm_layer(norm_cfg, out_channels)[1]
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def last_norm(self) -> nn.Module:
        return self.bn2

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out)) + identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            return self.relu(cp.checkpoint(self._residual, x, use_reentrant=False))
        return self.relu(self._residual(x))


class KDNABottleneck(BaseModule):
    """ResNet bottleneck (pytorch style, mmpretrain names) whose 3x3 conv may be given (a
    KernelDNA child or a parent built by the stage)."""
    expansion = 4

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 conv2: Optional[nn.Module] = None, downsample: Optional[nn.Module] = None,
                 norm_cfg: dict = dict(type='BN'), with_cp: bool = False,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        mid = out_channels // self.expansion
        self.with_cp = with_cp
        self.conv1 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn1 = build_norm_layer(norm_cfg, mid)[1]
        self.conv2 = conv2 if conv2 is not None else nn.Conv2d(mid, mid, 3, stride, 1,
                                                               bias=False)
        self.bn2 = build_norm_layer(norm_cfg, mid)[1]
        self.conv3 = nn.Conv2d(mid, out_channels, 1, bias=False)
        self.bn3 = build_norm_layer(norm_cfg, out_channels)[1]
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def last_norm(self) -> nn.Module:
        return self.bn3

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out)) + identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            return self.relu(cp.checkpoint(self._residual, x, use_reentrant=False))
        return self.relu(self._residual(x))


def _shortcut(in_channels: int, out_channels: int, stride: int,
              norm_cfg: dict) -> Optional[nn.Module]:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                         build_norm_layer(norm_cfg, out_channels)[1])


def _child_factory(terms: KDNAStaticTerms, channels: int, gate_reduction: int,
                   gate_norm_cfg: dict) -> Callable[[int, nn.Conv2d], KDNAChildConv2d]:
    def make(index: int, parent: nn.Conv2d) -> KDNAChildConv2d:
        return KDNAChildConv2d(channels, channels, 3, 1, 1, parent=parent, static_terms=terms,
                               index=index, gate_reduction=gate_reduction,
                               gate_norm_cfg=gate_norm_cfg)
    return make


# ---------------------------------------------------------------------------- stages
def kdna_basic_stage(in_channels: int, out_channels: int, stride: int, n_kids: int = 3,
                     norm_cfg: dict = dict(type='BN'), gate_reduction: int = 4,
                     gate_norm_cfg: dict = dict(type='BN'), with_cp: bool = False,
                     name: str = 'stage') -> KDNAStage:
    """The ``'basic'`` KernelDNA stage (ResNet-18's ``NewLayer`` for ``n_kids=3``): ``n_kids``
    basic blocks, ``n_kids - 1`` parents (see the module docstring).

    Forward: ``[B, in_channels, H, W]`` -> ``[B, out_channels, H / stride, W / stride]``.
    """
    if n_kids < 2:
        raise ValueError(f'{name}: the basic KernelDNA layout needs n_kids >= 2 (block 0 has a '
                         f'child of the first parent, which block 1 holds); got {n_kids}')
    terms = KDNAStaticTerms(n_kids, out_channels, 3)
    child = _child_factory(terms, out_channels, gate_reduction, gate_norm_cfg)
    parents = [nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
               for _ in range(n_kids - 1)]
    blocks = [KDNABasicBlock(in_channels, out_channels, stride, conv2=child(0, parents[0]),
                             downsample=_shortcut(in_channels, out_channels, stride, norm_cfg),
                             norm_cfg=norm_cfg, with_cp=with_cp)]
    for j in range(1, n_kids):
        blocks.append(KDNABasicBlock(out_channels, out_channels, 1, conv1=child(j, parents[j - 1]),
                                     conv2=parents[j - 1], norm_cfg=norm_cfg, with_cp=with_cp))
    return KDNAStage(blocks, dict(statics=terms))


def kdna_bottleneck_stage(in_channels: int, out_channels: int, stride: int, n_kids: int,
                          layout: str, norm_cfg: dict = dict(type='BN'), gate_reduction: int = 4,
                          gate_norm_cfg: dict = dict(type='BN'), with_cp: bool = False,
                          name: str = 'stage') -> KDNAStage:
    """A Bottleneck KernelDNA stage: ``layout='pairs'`` (ResNet-50's ``NewLayer3``, ``n_kids``
    child/parent pairs) or ``'shared'`` (``NewLayer4``, ``n_kids`` children of the last block).

    Forward: ``[B, in_channels, H, W]`` -> ``[B, out_channels, H / stride, W / stride]``.
    """
    if layout not in ('pairs', 'shared'):
        raise ValueError(f"{name}: layout must be 'pairs' or 'shared', got {layout!r}")
    if n_kids < 1:
        raise ValueError(f'{name}: the {layout!r} KernelDNA layout needs n_kids >= 1, got '
                         f'{n_kids}')
    mid = out_channels // KDNABottleneck.expansion
    terms = KDNAStaticTerms(n_kids, mid, 3)
    child = _child_factory(terms, mid, gate_reduction, gate_norm_cfg)

    def block(conv2: Optional[nn.Module] = None) -> KDNABottleneck:
        return KDNABottleneck(out_channels, out_channels, 1, conv2, norm_cfg=norm_cfg,
                              with_cp=with_cp)

    blocks: List[nn.Module] = [KDNABottleneck(
        in_channels, out_channels, stride,
        downsample=_shortcut(in_channels, out_channels, stride, norm_cfg), norm_cfg=norm_cfg,
        with_cp=with_cp)]
    if layout == 'pairs':
        for i in range(n_kids):
            parent = nn.Conv2d(mid, mid, 3, 1, 1, bias=False)
            blocks += [block(child(i, parent)), block(parent)]
    else:
        parent = nn.Conv2d(mid, mid, 3, 1, 1, bias=False)
        blocks += [block(child(i, parent)) for i in range(n_kids)] + [block(parent)]
    return KDNAStage(blocks, dict(statics=terms))


# ---------------------------------------------------------------------------- backbone
@MODELS.register_module()
class KDNAResNet(KDNABackbone):
    """ResNet backbone with KernelDNA children in ``layer3`` and ``layer4`` (the release's
    layouts; see the module docstring).

    Interface of mmpretrain's / mmdet's ``ResNet`` (pytorch style, four stages).

    Args:
        depth: 18, 34, 50, 101 or 152 (18 and 50 are the released models).
        n_kids: children of ``layer3`` and ``layer4``; None takes the depth's default (the
            release's for 18 and 50, the documented rule otherwise).
        gate_reduction: SE gate reduction of the children (4).
        gate_norm_cfg: norm of the SE gates (BatchNorm as the release: two samples per device in
            training; ``dict(type='GN', num_groups=1)`` works on one).
        in_channels, stem_channels, base_channels: image channels, stem width, ``layer1`` width
            (before expansion).
        stem_kernel_size, stem_stride, stem_pool: the stem conv and its max-pool (7, 2, True;
            3, 1, False for small inputs, see :class:`KDNAResNet_CIFAR`).
        num_stages, strides, dilations, style: mmdet's ResNet arguments, accepted at their
            release values only (4, ``(1, 2, 2, 2)``, ``(1, 1, 1, 1)``, ``'pytorch'``).
        out_indices: stages whose outputs are returned (0-based).
        frozen_stages: -1 freezes nothing, 0 the stem, k the stem and ``layer1..layer{k}``.
        norm_cfg: norm of the conv blocks.
        norm_eval: keep every BatchNorm (the gates' included) in eval mode while training.
        with_cp: gradient checkpointing of the blocks.
        zero_init_residual: zero the last norm of each block (not with pretrained weights).
        init_cfg: mmengine init config; ``dict(type='Pretrained', checkpoint=..., prefix=...)``
            loads a KernelDNA checkpoint, ``dict(type='KDNAFromPlain', checkpoint=...)`` a
            plain ResNet (see :func:`mmkw.converters.kdna_from_plain.init_from_plain`).

    Forward: ``[B, in_channels, H, W]`` -> tuple of the ``out_indices`` stage outputs, with
    ``base_channels * 2**i * expansion`` channels at strides 4, 8, 16, 32 (default stem), the
    widths mmdet's FPN expects of ResNet.
    """

    # block type, plain blocks per stage, layouts of layer3 and layer4
    arch_settings = {
        18: ('basic', (2, 2, 2, 2)),
        34: ('basic', (3, 4, 6, 3)),
        50: ('bottleneck', (3, 4, 6, 3)),
        101: ('bottleneck', (3, 4, 23, 3)),
        152: ('bottleneck', (3, 8, 36, 3)),
    }
    default_init_cfg = [dict(type='Kaiming', layer=['Conv2d']),
                        dict(type='Constant', val=1, layer=['_BatchNorm', 'GroupNorm'])]

    def __init__(self,
                 depth: int,
                 n_kids: Optional[Sequence[int]] = None,
                 gate_reduction: int = 4,
                 gate_norm_cfg: dict = dict(type='BN'),
                 in_channels: int = 3,
                 stem_channels: int = 64,
                 base_channels: int = 64,
                 stem_kernel_size: int = 7,
                 stem_stride: int = 2,
                 stem_pool: bool = True,
                 num_stages: int = 4,
                 strides: Sequence[int] = (1, 2, 2, 2),
                 dilations: Sequence[int] = (1, 1, 1, 1),
                 style: str = 'pytorch',
                 out_indices: Sequence[int] = (3, ),
                 frozen_stages: int = -1,
                 norm_cfg: dict = dict(type='BN', requires_grad=True),
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 zero_init_residual: bool = False,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=copy.deepcopy(self.default_init_cfg)
                         if init_cfg is None else init_cfg)
        if depth not in self.arch_settings:
            raise KeyError(f'invalid depth {depth} for KDNAResNet, choose from '
                           f'{sorted(self.arch_settings)}')
        # mmdet's / mmpretrain's ResNet arguments, accepted at the release's values only: the
        # KernelDNA stages are the release's, four of them, strided as torchvision's
        fixed = dict(num_stages=(num_stages, 4), strides=(tuple(strides), (1, 2, 2, 2)),
                     dilations=(tuple(dilations), (1, 1, 1, 1)), style=(style, 'pytorch'))
        for arg, (value, release) in fixed.items():
            if value != release:
                raise ValueError(f'KDNAResNet supports {arg}={release!r} only (the release\'s '
                                 f'layout), got {value!r}')
        if not out_indices or not set(out_indices) <= {0, 1, 2, 3}:
            raise ValueError(f'out_indices {tuple(out_indices)} must be a non-empty subset of '
                             '(0, 1, 2, 3)')
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f'frozen_stages must be in [-1, 4], got {frozen_stages}')
        block_type, plain_blocks = self.arch_settings[depth]
        self.depth = depth
        self.block_type = block_type
        self.plain_blocks = plain_blocks
        if n_kids is None:
            n_kids = ((plain_blocks[2] + 1, plain_blocks[3] + 1) if block_type == 'basic' else
                      (plain_blocks[2] // 2, plain_blocks[3] - 2))
        n_kids = tuple(n_kids)
        if len(n_kids) != 2 or not all(isinstance(n, int) for n in n_kids):
            raise ValueError(f'KDNAResNet-{depth}: n_kids must give two integers (children of '
                             f'layer3 and layer4), got {n_kids}')
        self.n_kids = n_kids
        self.layouts = ('basic', 'basic') if block_type == 'basic' else ('pairs', 'shared')
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.zero_init_residual = zero_init_residual

        self.conv1 = nn.Conv2d(in_channels, stem_channels, stem_kernel_size, stem_stride,
                               stem_kernel_size // 2, bias=False)
        self.bn1 = build_norm_layer(norm_cfg, stem_channels)[1]
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem_pool else nn.Identity()
        expansion = 1 if block_type == 'basic' else 4
        channels = stem_channels
        self.res_layers: List[str] = []
        for stage in range(4):
            out_channels = base_channels * 2**stage * expansion
            stride = 1 if stage == 0 else 2
            name = f'layer{stage + 1}'
            if stage < 2:
                layer = self._plain_stage(channels, out_channels, stride, plain_blocks[stage],
                                          norm_cfg, with_cp)
            elif block_type == 'basic':
                layer = kdna_basic_stage(channels, out_channels, stride, n_kids[stage - 2],
                                         norm_cfg, gate_reduction, gate_norm_cfg, with_cp,
                                         name=f'KDNAResNet-{depth} {name}')
            else:
                layer = kdna_bottleneck_stage(channels, out_channels, stride, n_kids[stage - 2],
                                              self.layouts[stage - 2], norm_cfg, gate_reduction,
                                              gate_norm_cfg, with_cp,
                                              name=f'KDNAResNet-{depth} {name}')
            self.add_module(name, layer)
            self.res_layers.append(name)
            channels = out_channels
        self.feat_dim = channels
        self._freeze_stages()

    def _plain_stage(self, in_channels: int, out_channels: int, stride: int, num_blocks: int,
                     norm_cfg: dict, with_cp: bool) -> nn.Sequential:
        block = KDNABasicBlock if self.block_type == 'basic' else KDNABottleneck
        blocks = [block(in_channels, out_channels, stride,
                        downsample=_shortcut(in_channels, out_channels, stride, norm_cfg),
                        norm_cfg=norm_cfg, with_cp=with_cp)]
        blocks += [block(out_channels, out_channels, 1, norm_cfg=norm_cfg, with_cp=with_cp)
                   for _ in range(1, num_blocks)]
        return nn.Sequential(*blocks)

    def init_weights(self) -> None:
        super().init_weights()
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg]
        loaded = ('Pretrained', PLAIN_INIT_TYPE)
        pretrained = any(isinstance(cfg, dict) and cfg.get('type') in loaded for cfg in cfgs)
        if self.zero_init_residual and not pretrained:
            for module in self.modules():
                if isinstance(module, (KDNABasicBlock, KDNABottleneck)):
                    nn.init.zeros_(module.last_norm.weight)

    def frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.conv1, self.bn1] + [getattr(self, self.res_layers[i])
                                         for i in range(self.frozen_stages)]

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i, name in enumerate(self.res_layers):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)

    # ------------------------------------------------------------------ adapter init
    def plain_key(self, key: str) -> Optional[str]:
        """Adapter-init source of ``key`` in mmpretrain's plain ResNet of the same depth.

        - stem, ``layer1``, ``layer2``: the same name;
        - ``'pairs'`` / ``'shared'`` stages (Bottleneck): block ``b`` takes plain block
          ``min(b, d - 1)`` (ResNet-50's seven-block ``layer3`` repeats the sixth), every conv
          and norm of its own by name; a child 3x3 has no weight (it is its parent's);
        - ``'basic'`` stages: block 0 is plain block 0 (its child ``conv2`` derives from
          ``P_1 = layer{s}.1.conv2``, which takes plain block 0's ``conv2``, so block 0 starts as
          plain block 0); parent ``P_j`` (``layer{s}.{j}.conv2``) and its norm take plain block
          ``min(j - 1, d - 1)``'s ``conv2`` and ``bn2``; the norm after child ``j`` takes the
          same ``bn2`` (the norm of the kernel it derives from). Plain ``conv1`` of blocks >= 1
          has no counterpart.
        - gates and static terms: None (fresh SE gates, static terms 0).
        """
        if self._fresh_kdna_key(key):
            return None
        parts = key.split('.')
        if not parts[0].startswith('layer') or parts[0] in ('layer1', 'layer2'):
            return key
        stage = int(parts[0][len('layer'):]) - 1
        plain = self.plain_blocks[stage]
        block, rest = int(parts[1]), parts[2:]
        if self.block_type != 'basic':
            return '.'.join([parts[0], str(min(block, plain - 1))] + rest)
        if block == 0:
            return key
        source = str(min(block - 1, plain - 1))
        if rest[0] in ('conv2', 'bn2'):
            return '.'.join([parts[0], source] + rest)
        if rest[0] == 'bn1':
            return '.'.join([parts[0], source, 'bn2'] + rest[1:])
        return None


@MODELS.register_module()
class KDNAResNet_CIFAR(KDNAResNet):
    """KDNAResNet for small inputs (CIFAR, digits): 3x3 stride-1 stem conv, no max-pool, as
    mmpretrain's ``ResNet_CIFAR``. Same arguments as :class:`KDNAResNet`; its weights load into
    a ``KDNAResNet(stem_kernel_size=3)`` (e.g. a detector backbone)."""

    def __init__(self, depth: int, stem_kernel_size: int = 3, stem_stride: int = 1,
                 stem_pool: bool = False, **kwargs) -> None:
        super().__init__(depth, stem_kernel_size=stem_kernel_size, stem_stride=stem_stride,
                         stem_pool=stem_pool, **kwargs)


def count_children(module: nn.Module) -> Dict[str, int]:
    """Children per KernelDNA stage of ``module`` (stage name -> count), for summaries."""
    counts: Dict[str, int] = {}
    for name, sub in module.named_modules():
        if isinstance(sub, KDNAChildConv2d):
            stage = name.split('.')[0]
            counts[stage] = counts.get(stage, 0) + 1
    return counts
