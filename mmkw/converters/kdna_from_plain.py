"""Adapter fine-tuning of a KernelDNA backbone from a plain pretrained CNN.

The KernelDNA paper says its children are "compatible with pre-trained CNNs via adapter-based
fine-tuning"; the release has no code for it. :func:`init_from_plain` initialises a
:class:`~mmkw.models.KDNAResNet`, :class:`~mmkw.models.KDNAMobileNetV2` or
:class:`~mmkw.models.KDNAConvNeXt` from the checkpoint of the plain network:

- every module the plain network also has (the unchanged stages, the stem, every parent, every
  conv and norm of its own that a child block keeps) takes the plain weights; each backbone's
  ``plain_key`` states the mapping (``docs/kerneldna.md`` has the table);
- every child's kernel is its parent's: the static terms are set to 0;
- the SE gates (the dynamic adapters) start fresh (torch's default init).

The checkpoint may use mmpretrain's names (an ``ImageClassifier`` with ``backbone.*`` keys, or a
bare backbone) or torchvision's (ResNet: the same names; MobileNetV2: ``features.*``, renamed
here). In a config::

    backbone=dict(type='KDNAResNet', depth=50,
                  init_cfg=dict(type='KDNAFromPlain', checkpoint='torchvision://resnet50'))
"""
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from .official import ConversionError, unwrap_state_dict

# (expand ratio, blocks) of MobileNetV2's seven layers: torchvision's features.1..17 in order
_MOBILENET_V2_LAYERS = ((1, 1), (6, 2), (6, 3), (6, 4), (6, 3), (6, 3), (6, 1))
_CONV_BN = ('conv', 'bn')


@dataclass
class PlainInitReport:
    """What :func:`init_from_plain` did: keys loaded (ours), keys left fresh (gates, static
    terms), plain keys nothing took (e.g. a child block's own pointwise weights)."""
    loaded: List[str] = field(default_factory=list)
    fresh: List[str] = field(default_factory=list)
    unused: List[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f'loaded {len(self.loaded)} tensors from the plain checkpoint, {len(self.fresh)} '
                f'start fresh (SE gates, static terms 0), {len(self.unused)} plain tensors '
                'unused')


def torchvision_mobilenet_v2_to_mmpretrain(key: str) -> Optional[str]:
    """mmpretrain's name of a torchvision MobileNetV2 key (``features.*``, ``classifier.1.*``),
    or None for the classifier / unknown keys."""
    match = re.match(r'features\.(\d+)\.(.+)$', key)
    if not match:
        return None
    index, rest = int(match[1]), match[2]
    if index == 0 or index == 18:
        inner = re.match(r'([01])\.(.+)$', rest)
        module = 'conv1' if index == 0 else 'conv2'
        return f'{module}.{_CONV_BN[int(inner[1])]}.{inner[2]}' if inner else None
    position = index - 1
    for layer, (expand_ratio, blocks) in enumerate(_MOBILENET_V2_LAYERS, 1):
        if position < blocks:
            break
        position -= blocks
    else:
        return None
    units = 2 if expand_ratio == 1 else 3
    inner = re.match(r'conv\.(\d+)\.(.+)$', rest)
    if not inner:
        return None
    unit, tail = int(inner[1]), inner[2]
    prefix = f'layer{layer}.{position}.conv'
    if unit < units - 1:  # ConvBNReLU: (conv, bn, relu6)
        sub = re.match(r'([01])\.(.+)$', tail)
        return f'{prefix}.{unit}.{_CONV_BN[int(sub[1])]}.{sub[2]}' if sub else None
    if unit == units - 1:  # the linear 1x1 conv, then its norm as the next entry
        return f'{prefix}.{unit}.conv.{tail}'
    if unit == units:
        return f'{prefix}.{units - 1}.bn.{tail}'
    return None


def plain_backbone_state_dict(checkpoint: Union[str, Mapping], prefix: Optional[str] = None,
                              map_location: str = 'cpu'
                              ) -> 'OrderedDict[str, torch.Tensor]':
    """The backbone part of a plain checkpoint (a path or URL mmengine can load, a loaded
    checkpoint or a state dict), with mmpretrain's names.

    ``prefix`` selects and strips a prefix (e.g. ``'backbone.'``); None takes ``'backbone.'``
    when present, else every key. torchvision MobileNetV2 keys are renamed.
    """
    if isinstance(checkpoint, str):
        from mmengine.runner.checkpoint import CheckpointLoader

        import mmkw  # noqa: F401  (allow-lists mmengine's checkpoint metadata types)
        checkpoint = CheckpointLoader.load_checkpoint(checkpoint, map_location=map_location)
    state_dict, _ = unwrap_state_dict(checkpoint)
    if prefix is None:
        prefix = 'backbone.' if any(k.startswith('backbone.') for k in state_dict) else ''
    if prefix:
        state_dict = OrderedDict((k[len(prefix):], v) for k, v in state_dict.items()
                                 if k.startswith(prefix))
        if not state_dict:
            raise ConversionError(f'the plain checkpoint has no key starting with {prefix!r}')
    if any(k.startswith('features.') for k in state_dict):
        renamed = OrderedDict()
        for key, value in state_dict.items():
            new_key = torchvision_mobilenet_v2_to_mmpretrain(key)
            if new_key is not None:
                renamed[new_key] = value
        state_dict = renamed
    return state_dict


def _kdna_backbone(model: nn.Module) -> nn.Module:
    backbone = getattr(model, 'backbone', model)
    if not hasattr(backbone, 'plain_key'):
        raise TypeError(f'init_from_plain needs a KernelDNA backbone (KDNAResNet, '
                        f'KDNAMobileNetV2, KDNAConvNeXt) or a model holding one as .backbone, '
                        f'got {type(model).__name__}')
    return backbone


@torch.no_grad()
def init_from_plain(model: nn.Module, checkpoint: Union[str, Mapping],
                    prefix: Optional[str] = None, map_location: str = 'cpu',
                    strict: bool = True, reset_gates: bool = True,
                    logger: Optional[str] = 'current') -> PlainInitReport:
    """Initialise a KernelDNA backbone (or a model with one as ``.backbone``) from a plain
    pretrained network (see the module docstring).

    Args:
        model: the KernelDNA backbone or a model holding it as ``backbone``.
        checkpoint: path/URL (``torchvision://resnet18``, ``https://...``), a loaded checkpoint
            or a state dict of the plain network.
        prefix: the plain backbone's prefix in the checkpoint (default: ``'backbone.'`` if
            present).
        strict: every key the mapping names must exist in the checkpoint with the same shape;
            False leaves missing ones at their init (shape mismatches always fail).
        reset_gates: give the SE gates torch's default init (they are the new, untrained
            adapters); False keeps their current values.
        logger: where to log the summary (mmengine's ``print_log``); None: silent.

    Raises :class:`~mmkw.converters.ConversionError` naming the first key (ours and the plain
    one) that is missing or has another shape, with the count of the others.
    """
    from mmkw.ops.kerneldna import KDNAGate, KDNAStaticTerms
    backbone = _kdna_backbone(model)
    plain = plain_backbone_state_dict(checkpoint, prefix, map_location)
    report = PlainInitReport()
    errors: List[str] = []
    used: Dict[str, str] = {}
    updates: List[Tuple[torch.Tensor, torch.Tensor]] = []
    for key, target in backbone.state_dict(keep_vars=True).items():
        source = backbone.plain_key(key)
        if source is None:
            report.fresh.append(key)
            continue
        if source not in plain:
            if strict:
                errors.append(f'{key!r} takes the plain {source!r}, which the checkpoint lacks')
            else:
                report.fresh.append(key)
            continue
        value = plain[source]
        if tuple(value.shape) != tuple(target.shape):
            errors.append(f'{key!r} takes the plain {source!r}, whose shape '
                          f'{list(value.shape)} differs from {list(target.shape)}')
            continue
        updates.append((target, value))
        used[source] = key
        report.loaded.append(key)
    if errors:
        more = f' ({len(errors) - 1} more)' if len(errors) > 1 else ''
        raise ConversionError(
            f'the plain checkpoint does not fit {type(backbone).__name__}: {errors[0]}{more}. '
            'Is it the plain network of the same depth / width (mmpretrain or torchvision '
            'names)?')
    for target, value in updates:
        target.data.copy_(value.to(target.dtype))
    for module in backbone.modules():
        if isinstance(module, KDNAStaticTerms):
            module.reset_parameters()
        elif isinstance(module, KDNAGate) and reset_gates:
            module.reset_parameters()
    report.unused = [k for k in plain if k not in used and not k.endswith('num_batches_tracked')]
    if logger is not None:
        from mmengine.logging import print_log
        print_log(f'{type(backbone).__name__} adapter init: {report.summary()}', logger=logger)
    return report
