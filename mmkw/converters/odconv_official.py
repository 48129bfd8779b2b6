"""Convert the official ODConv checkpoints (github.com/OSVAI/ODConv) to mmkw/mmpretrain ones.

The release trains with ``main.py``, which saves ``{'state_dict': model.state_dict(), 'epoch',
'best_acc', 'optimizer'}`` of a DataParallel / DistributedDataParallel model (keys prefixed with
``module.``). Its ODConv layers have the names mmkw's :class:`~mmkw.ops.ODConv2d` keeps
(``<conv>.weight`` ``[K, C_out, C_in / g, k, k]``, ``<conv>.attention.{fc,bn,channel_fc,
filter_fc,spatial_fc,kernel_fc}.*``; ``../shared/notes/peers_format.md`` §2), so a conversion
only renames module paths, into the mmpretrain ``ImageClassifier`` of a ``DynamicResNet`` /
``DynamicMobileNetV2`` with ``conv_cfg=dict(type='ODConv', kernel_num=K)`` and a
``LinearClsHead`` (``backbone.*``, ``head.*``):

- ResNet (``od_resnet18/34/50/101``, the plain ``resnet*`` of the same repo): torchvision names
  in both, so backbone keys gain ``backbone.`` and ``fc`` becomes ``head.fc``.
- MobileNetV2 (``od_mobilenetv2_050/075/100``, plain ``mobilenetv2_*``): torchvision-like
  ``features.{i}`` become mmpretrain's ``conv1`` (``features.0``), ``layer{l}.{b}.conv.{u}.{conv,
  bn}`` (``features.1..17``; a block's ``ConvBNReLU`` units are ``(conv, bn, relu6)``
  sequentials, its linear conv and norm two more entries) and ``conv2`` (``features.18``);
  ``classifier.1`` becomes ``head.fc``.

The architecture comes from the key structure (block counts, stem width), K from the kernels'
first dimension (a checkpoint without 5-D kernels and attentions is a plain network), the
attention reduction from the hidden widths; each can be given instead. The converted state dict
is checked against the mmkw model key by key: a key without counterpart, a missing key or a shape
mismatch raises :class:`ConversionError` naming the first one and both shapes.
"""
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from .official import ConversionError, load_official_checkpoint, unwrap_state_dict

Shape = Tuple[int, ...]
PathLike = Union[str, Path]

# mmkw backbone of every architecture the release's model files build, by the release's names
# without their 'od_' prefix
ARCHS: Dict[str, Tuple[str, dict]] = {
    'resnet18': ('resnet', dict(depth=18)),
    'resnet34': ('resnet', dict(depth=34)),
    'resnet50': ('resnet', dict(depth=50)),
    'resnet101': ('resnet', dict(depth=101)),
    'mobilenetv2_050': ('mobilenet_v2', dict(widen_factor=0.5)),
    'mobilenetv2_075': ('mobilenet_v2', dict(widen_factor=0.75)),
    'mobilenetv2_100': ('mobilenet_v2', dict(widen_factor=1.0)),
}
# (blocks per stage, bottleneck) -> depth
_RESNET_DEPTHS = {((2, 2, 2, 2), False): 18, ((3, 4, 6, 3), False): 34,
                  ((3, 4, 6, 3), True): 50, ((3, 4, 23, 3), True): 101}
# attention reductions tried when inferring one, the release's default first
REDUCTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)
MIN_CHANNELS = 16  # the release's smallest attention width


def normalize_arch(arch: str) -> str:
    """Canonical architecture name; the release's model names (``od_resnet50``,
    ``od_mobilenetv2_050``) and ``mobilenet_v2`` spellings are accepted."""
    name = arch.strip().lower().replace('-', '_')
    name = re.sub(r'^od_', '', name).replace('mobilenet_v2', 'mobilenetv2')
    if name == 'mobilenetv2':
        name = 'mobilenetv2_100'
    if name not in ARCHS:
        raise ConversionError(f'unknown --arch {arch!r}; choose from {sorted(ARCHS)}')
    return name


@dataclass(frozen=True)
class ODConvTarget:
    """The mmkw classifier an official ODConv checkpoint converts to.

    Args:
        arch: a key of :data:`ARCHS`.
        kernel_num: K of the ODConv layers; None for the plain network of the same repo.
        reduction: the attentions' hidden width ratio (the release's 1/16).
        num_classes: classes of the ``LinearClsHead``.
    """
    arch: str
    kernel_num: Optional[int] = 4
    reduction: float = 1 / 16
    num_classes: int = 1000

    @property
    def family(self) -> str:
        return ARCHS[self.arch][0]

    @property
    def conv_cfg(self) -> Optional[dict]:
        """The backbone's conv method (None: plain convs)."""
        if self.kernel_num is None:
            return None
        return dict(type='ODConv', kernel_num=self.kernel_num, reduction=self.reduction)

    def describe(self) -> str:
        if self.kernel_num is None:
            model = f'plain {self.arch}'
        else:
            model = f'ODConv ({self.kernel_num}x, reduction {self.reduction:g}) {self.arch}'
        return f'{model} classifier ({self.num_classes} classes)'

    def backbone_cfg(self) -> dict:
        """The mmpretrain config of the backbone (``conv_cfg`` as the method configs emit)."""
        family, kwargs = ARCHS[self.arch]
        name = 'DynamicResNet' if family == 'resnet' else 'DynamicMobileNetV2'
        return dict(type=name, conv_cfg=self.conv_cfg, **kwargs)

    def build(self) -> Tuple[nn.Module, nn.Module]:
        """The mmkw backbone and the ``LinearClsHead`` of this target."""
        from mmpretrain.models.heads import LinearClsHead

        from mmkw.models import DynamicMobileNetV2, DynamicResNet
        cfg = self.backbone_cfg()
        backbone_type = DynamicResNet if cfg.pop('type') == 'DynamicResNet' \
            else DynamicMobileNetV2
        backbone = backbone_type(**cfg)
        return backbone, LinearClsHead(self.num_classes, backbone.feat_dim)


@lru_cache(maxsize=16)
def _expected_shapes(target: ODConvTarget) -> Tuple[Tuple[str, Shape], ...]:
    try:
        backbone, head = target.build()
    except (ValueError, KeyError, TypeError) as error:
        raise ConversionError(f'mmkw cannot build {target.describe()}: {error}') from error
    return tuple([(f'backbone.{k}', tuple(v.shape)) for k, v in backbone.state_dict().items()] +
                 [(f'head.{k}', tuple(v.shape)) for k, v in head.state_dict().items()])


def expected_shapes(target: ODConvTarget) -> 'OrderedDict[str, Shape]':
    """State-dict keys and shapes of the mmkw classifier of ``target``."""
    return OrderedDict(_expected_shapes(target))


# ----------------------------------------------------------------------------- inference
def detect_arch(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The architecture of an official state dict, from its key structure."""
    keys = list(state_dict)
    choices = ', '.join(sorted(ARCHS))
    if any(k.startswith('features.') for k in keys):
        from mmkw.models.backbones.mobilenet_v2 import make_divisible
        stem = state_dict.get('features.0.0.weight')
        width = None if stem is None else stem.shape[0]
        names = [name for name, (family, kwargs) in ARCHS.items() if family == 'mobilenet_v2'
                 and make_divisible(32 * kwargs['widen_factor'], 8) == width]
        if len(names) != 1:
            raise ConversionError(f'cannot tell the MobileNetV2 width from the stem conv '
                                  f'"features.0.0.weight" ({width} channels): pass --arch '
                                  f'({choices})')
        return names[0]
    if any(k.startswith('layer1.') for k in keys):
        counts: Dict[int, int] = {}
        for key in keys:
            match = re.match(r'layer(\d+)\.(\d+)\.', key)
            if match:
                counts[int(match[1])] = max(counts.get(int(match[1]), 0), int(match[2]) + 1)
        blocks = tuple(counts.get(i, 0) for i in range(1, 5))
        bottleneck = any(re.match(r'layer\d+\.\d+\.conv3\.', k) for k in keys)
        depth = _RESNET_DEPTHS.get((blocks, bottleneck))
        if depth is None:
            raise ConversionError(f'a ResNet with {blocks} blocks per stage '
                                  f'({"bottleneck" if bottleneck else "basic"}) is none of the '
                                  f'release\'s depths: pass --arch ({choices})')
        return f'resnet{depth}'
    raise ConversionError('cannot tell the architecture: no ResNet ("layer1.") or MobileNetV2 '
                          f'("features.") keys; first keys: {keys[:5]}. Pass --arch ({choices})')


def _conv_prefixes(state_dict: Mapping[str, torch.Tensor]) -> List[str]:
    """Module paths of the ODConv layers (those with an ``attention.fc``)."""
    return [k[:-len('.attention.fc.weight')] for k in state_dict
            if k.endswith('.attention.fc.weight')]


def detect_kernel_num(state_dict: Mapping[str, torch.Tensor]) -> Optional[int]:
    """K of the ODConv layers (their kernels' first dimension), None for a plain network."""
    prefixes = _conv_prefixes(state_dict)
    if not prefixes:
        return None
    kernel_nums = {int(state_dict[f'{p}.weight'].shape[0]) for p in prefixes
                   if f'{p}.weight' in state_dict and state_dict[f'{p}.weight'].dim() == 5}
    if len(kernel_nums) != 1:
        raise ConversionError(f'the ODConv layers hold {sorted(kernel_nums) or "no"} kernel '
                              'counts (5-D weights): pass --kernel-num')
    return kernel_nums.pop()


def detect_reduction(state_dict: Mapping[str, torch.Tensor]) -> float:
    """The attention reduction r for which every ODConv layer's hidden width is
    ``max(int(C_in * r), 16)``; the release's 1/16 first when several fit."""
    widths = [tuple(state_dict[f'{p}.attention.fc.weight'].shape[:2])
              for p in _conv_prefixes(state_dict)]
    for reduction in REDUCTIONS:
        if all(hidden == max(int(c_in * reduction), MIN_CHANNELS) for hidden, c_in in widths):
            return reduction
    raise ConversionError(f'the attention widths fit none of the reductions '
                          f'{[f"{r:g}" for r in REDUCTIONS]}: pass --reduction')


def _num_classes(state_dict: Mapping[str, torch.Tensor]) -> Optional[int]:
    for name in ('fc.bias', 'classifier.1.bias', 'fc.weight', 'classifier.1.weight'):
        if name in state_dict:
            return int(state_dict[name].shape[0])
    return None


def infer_target(state_dict: Mapping[str, torch.Tensor], arch: Optional[str] = None,
                 kernel_num: Union[int, None, str] = 'infer',
                 reduction: Optional[float] = None,
                 num_classes: Optional[int] = None) -> ODConvTarget:
    """The mmkw model of an official state dict; every argument given is taken as is
    (``kernel_num=None`` asks for the plain network)."""
    arch = normalize_arch(arch) if arch else detect_arch(state_dict)
    if kernel_num == 'infer':
        kernel_num = detect_kernel_num(state_dict)
    elif kernel_num is not None and not (isinstance(kernel_num, int) and kernel_num >= 1):
        raise ConversionError(f'--kernel-num must be a positive int, got {kernel_num!r}')
    if reduction is None:
        reduction = detect_reduction(state_dict) if kernel_num is not None else 1 / 16
    num_classes = num_classes or _num_classes(state_dict) or 1000
    return ODConvTarget(arch, kernel_num, float(reduction), int(num_classes))


# ----------------------------------------------------------------------------- renaming
def _rename_resnet(key: str) -> Optional[str]:
    if re.match(r'fc\.(weight|bias)$', key):
        return f'head.{key}'
    if re.match(r'(conv1|bn1|layer\d+)\.', key):
        return f'backbone.{key}'
    return None


@lru_cache(maxsize=None)
def _mobilenet_units() -> Tuple[Tuple[str, Optional[int]], ...]:
    """``features.{i}`` -> (mmkw module, conv units of its block; None: a ConvBNReLU)."""
    from mmkw.models import DynamicMobileNetV2
    units: List[Tuple[str, Optional[int]]] = [('conv1', None)]
    settings = DynamicMobileNetV2.arch_settings
    for layer, (expand_ratio, _, num_blocks, _) in enumerate(settings, 1):
        units += [(f'layer{layer}.{block}', 3 if expand_ratio != 1 else 2)
                  for block in range(num_blocks)]
    return tuple(units + [('conv2', None)])


_CONV_BN = ('conv', 'bn')  # index inside the release's ConvBNReLU -> mmkw's conv module name


def _rename_mobilenet_v2(key: str) -> Optional[str]:
    match = re.match(r'classifier\.1\.(weight|bias)$', key)
    if match:
        return f'head.fc.{match[1]}'
    match = re.match(r'features\.(\d+)\.(.+)$', key)
    if not match:
        return None
    units = _mobilenet_units()
    index, rest = int(match[1]), match[2]
    if index >= len(units):
        return None
    module, num_units = units[index]
    if num_units is None:  # the stem and the last conv: ConvBNReLU
        inner = re.match(r'([01])\.(.+)$', rest)
        return f'backbone.{module}.{_CONV_BN[int(inner[1])]}.{inner[2]}' if inner else None
    inner = re.match(r'conv\.(\d+)\.(.+)$', rest)
    if not inner:
        return None
    unit, tail = int(inner[1]), inner[2]
    if unit < num_units - 1:  # expansion / depthwise ConvBNReLU
        sub = re.match(r'([01])\.(.+)$', tail)
        return f'backbone.{module}.conv.{unit}.{_CONV_BN[int(sub[1])]}.{sub[2]}' if sub else None
    if unit == num_units - 1:  # the linear 1x1 conv, then its norm as the next entry
        return f'backbone.{module}.conv.{unit}.conv.{tail}'
    if unit == num_units:
        return f'backbone.{module}.conv.{num_units - 1}.bn.{tail}'
    return None


def rename_official(state_dict: Mapping[str, torch.Tensor], target: ODConvTarget
                    ) -> 'OrderedDict[str, Optional[str]]':
    """Official key -> mmkw key (None: no counterpart)."""
    rule = _rename_resnet if target.family == 'resnet' else _rename_mobilenet_v2
    return OrderedDict((key, rule(key)) for key in state_dict)


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], target: ODConvTarget,
                       source: str = 'the checkpoint') -> 'OrderedDict[str, torch.Tensor]':
    """Rename an official state dict for ``target`` and check every key and shape.

    Returns the converted state dict in the model's order. Raises :class:`ConversionError`
    naming the first official key without a counterpart, the first shape that differs (both
    shapes) or the first key the model needs that the checkpoint lacks.
    """
    expected = expected_shapes(target)
    errors: List[str] = []
    converted: Dict[str, torch.Tensor] = {}
    origin: Dict[str, str] = {}
    for key, new_key in rename_official(state_dict, target).items():
        tensor = state_dict[key]
        if new_key is None:
            errors.append(f'official key {key!r} has no counterpart in the model')
        elif new_key in origin:
            errors.append(f'official keys {origin[new_key]!r} and {key!r} both map to '
                          f'{new_key!r}')
        elif new_key not in expected:
            origin[new_key] = key
            errors.append(f'official key {key!r} (mmkw name {new_key!r}) is not in the model')
        else:
            origin[new_key] = key
            if tuple(tensor.shape) != expected[new_key]:
                errors.append(f'official key {key!r} (mmkw name {new_key!r}) has shape '
                              f'{list(tensor.shape)} but the model needs '
                              f'{list(expected[new_key])}')
            else:
                converted[new_key] = tensor
    errors += [f'the model needs {key!r} (shape {list(shape)}), which {source} lacks'
               for key, shape in expected.items() if key not in origin]
    if errors:
        more = f' ({len(errors) - 1} more mismatches)' if len(errors) > 1 else ''
        raise ConversionError(f'{source} does not match mmkw\'s {target.describe()}: '
                              f'{errors[0]}{more}')
    return OrderedDict((k, converted[k]) for k in expected)


# ----------------------------------------------------------------------------- conversion
@dataclass
class ODConvConversion:
    """A converted checkpoint: its state dict, the model it is for, and the checkpoint meta."""
    state_dict: 'OrderedDict[str, torch.Tensor]'
    target: ODConvTarget
    meta: dict
    notes: List[str] = field(default_factory=list)

    def checkpoint(self) -> dict:
        """``{'state_dict': ..., 'meta': ...}`` as mmengine saves it (tensors and plain Python
        values only: it loads with ``torch.load(..., weights_only=True)``)."""
        state_dict = OrderedDict((k, v.detach().contiguous()) for k, v in self.state_dict.items())
        return dict(state_dict=state_dict, meta=dict(self.meta))


def convert_odconv_official(checkpoint: Union[PathLike, Mapping], arch: Optional[str] = None,
                            kernel_num: Union[int, None, str] = 'infer',
                            reduction: Optional[float] = None, key: Optional[str] = None,
                            trust: bool = False) -> ODConvConversion:
    """Convert an official ODConv checkpoint (a path, a loaded checkpoint or a state dict).

    Args:
        checkpoint: the official checkpoint (``{'state_dict': ...}``, ``module.`` prefixes
            removed).
        arch: ``resnet18``, ``resnet50``, ``mobilenetv2_100``, ``mobilenetv2_050`` (also
            ``resnet34/101``, ``mobilenetv2_075``, the release's ``od_`` names); inferred from
            the keys when None.
        kernel_num: K; inferred when ``'infer'``; None for a plain network.
        reduction: attention reduction; inferred from the hidden widths when None.
        key: the entry of the checkpoint holding the state dict.
        trust: unpickle the file fully (trusted files only; see
            :func:`mmkw.converters.official.load_official_checkpoint`).
    """
    source = 'the checkpoint'
    if isinstance(checkpoint, (str, Path)):
        source = Path(checkpoint).name
        state_dict, info = load_official_checkpoint(checkpoint, key, trust)
    else:
        state_dict, info = unwrap_state_dict(checkpoint, key)
    if any(k.startswith('backbone.') for k in state_dict):
        raise ConversionError(f'{source} is a detection checkpoint ("backbone." keys); this '
                              'converter takes the release\'s ImageNet classifiers')
    target = infer_target(state_dict, arch, kernel_num, reduction)
    converted = convert_state_dict(state_dict, target, source)
    notes = [f'{source}: {target.describe()}'
             + (f' (state dict {info["source_key"]!r})' if info['source_key'] else '')]
    from mmkw import __version__
    meta = dict(converted_from='OSVAI/ODConv', converter='mmkw.converters.odconv_official',
                source=source, source_key=info['source_key'], arch=target.arch,
                kernel_num=target.kernel_num, reduction=target.reduction,
                num_classes=target.num_classes, backbone=target.backbone_cfg(),
                mmkw_version=__version__)
    return ODConvConversion(converted, target, meta, notes)


def save_checkpoint(result: ODConvConversion, path: PathLike) -> Path:
    """Write ``result`` as an mmengine-style checkpoint, creating folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(result.checkpoint(), path)
    return path


__all__ = ['ARCHS', 'ODConvConversion', 'ODConvTarget', 'convert_odconv_official',
           'convert_state_dict', 'detect_arch', 'detect_kernel_num', 'detect_reduction',
           'expected_shapes', 'infer_target', 'rename_official', 'save_checkpoint']
