"""Which convs of a backbone are dynamic, and how: the *conv method* a backbone takes as config.

A backbone describes each of its convs as a :class:`ConvSite` (family, role, stage, name, shape)
and asks its :class:`ConvMethod` for the ``conv_cfg`` of mmcv's ``build_conv_layer``: None for a
static conv, or the config of a dynamic conv layer. The method holds what its convs share (KW:
the :class:`~mmkw.ops.WarehouseManager`), registers it on the backbone, finishes it once all
convs exist, and freezes it with frozen stages. So ResNet, MobileNetV2 and ConvNeXt are written
once and run KW, ODConv, DY-Conv or KW* from a config, in the spirit of mmdet's ``dcn``::

    backbone=dict(type='DynamicResNet', depth=50, conv_cfg=dict(type='ODConv', kernel_num=4))

Each method states its layer choice per backbone family, as its paper and release do.
"""
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Tuple, Union

import torch.nn as nn
from mmengine.registry import Registry

CONV_METHODS = Registry('dynamic conv method')

FAMILIES = ('resnet', 'mobilenet_v2', 'convnext')


@dataclass(frozen=True)
class ConvSite:
    """One conv of a backbone, as the conv methods see it.

    Args:
        family: 'resnet', 'mobilenet_v2' or 'convnext'.
        role: what the conv does in its network. ResNet: 'stem', 'conv' (a block conv),
            'downsample' (the 1x1 shortcut conv); MobileNetV2: 'stem', 'expand', 'depthwise',
            'project', 'last' (the 1x1 conv to 1280); ConvNeXt: 'stem', 'downsample',
            'depthwise', 'pointwise'.
        name: its module path without the trailing ``.conv``/``.weight``, e.g.
            ``'layer2.0.conv1'``; KW names warehouses after its block.
        stage: the stage it belongs to (0-based; -1 for the stem).
        shape: ``(out_channels, in_channels, kernel_size)``.
        groups: its groups (depthwise: ``in_channels``).
        stride: its stride.
        share_stage: the stage whose shared parameters it uses when the method shares across
            a stage (KW's Table 15 hands a stage's entry convs to the previous stage); defaults
            to ``stage``; -1 for a conv before the first stage.
        block: index of its block within the stage (-1 outside blocks).
        num_blocks: blocks in its stage.
    """
    family: str
    role: str
    name: str
    stage: int
    shape: Tuple[int, int, int]
    groups: int = 1
    stride: int = 1
    share_stage: Optional[int] = None
    block: int = -1
    num_blocks: int = 0

    @property
    def sharing_stage(self) -> int:
        return self.stage if self.share_stage is None else self.share_stage

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.shape[0] == self.shape[1]


class ConvMethod:
    """Base of the conv methods: every conv static (a plain network).

    Subclasses set ``name`` and ``families`` and override :meth:`conv_cfg`; methods whose
    convs share parameters also override :meth:`shared_modules`, :meth:`finish` and
    :meth:`freeze_shared`.
    """
    name = 'plain'
    families: Tuple[str, ...] = FAMILIES

    def setup(self, family: str, backbone: str, **arch) -> None:
        """Called by a backbone of ``family`` (named ``backbone`` in errors) before it builds
        its convs; ``arch`` holds what a method's defaults depend on (ConvNeXt: ``depths``)."""
        if family not in self.families:
            raise ValueError(f"{backbone}: conv_cfg type {self.name!r} has no layer choice for "
                             f'{family} backbones (it has one for {list(self.families)})')
        self.family = family
        self.backbone = backbone

    def conv_cfg(self, site: ConvSite) -> Optional[dict]:
        """The ``conv_cfg`` of ``build_conv_layer`` for the conv at ``site`` (None: static)."""
        return None

    def shared_modules(self) -> Dict[str, nn.Module]:
        """Modules to register on the backbone under these names (their state-dict keys)."""
        return {}

    def finish(self, backbone: nn.Module) -> None:
        """Called once the backbone has built all its convs."""

    def freeze_shared(self, modules: Iterable[nn.Module]) -> None:
        """Stop the gradient of shared parameters that convs inside ``modules`` use."""

    @property
    def is_dynamic(self) -> bool:
        return type(self) is not ConvMethod


ConvMethodLike = Union[None, dict, ConvMethod]


def build_conv_method(cfg: ConvMethodLike, backbone: str = 'backbone') -> ConvMethod:
    """A :class:`ConvMethod` from a config dict (``type`` is one of ``CONV_METHODS``), an
    instance, or None (plain convs)."""
    if cfg is None:
        return ConvMethod()
    if isinstance(cfg, ConvMethod):
        return cfg
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise TypeError(f'{backbone}: conv_cfg must be None or a dict with a type (one of '
                        f'{sorted(CONV_METHODS.module_dict)}), got {cfg!r}')
    cfg = dict(cfg)
    method_type = cfg.pop('type')
    if method_type not in CONV_METHODS.module_dict:
        raise KeyError(f'{backbone}: unknown conv_cfg type {method_type!r}; the dynamic conv '
                       f'methods are {sorted(CONV_METHODS.module_dict)}')
    return CONV_METHODS.module_dict[method_type](**cfg)
