"""Convert checkpoints of the official KernelDNA code (github.com/haiduo/KernelDNA) to mmkw.

The release's ``main.py`` saves ``{'epoch', 'arch', 'state_dict', 'best_acc1', 'optimizer',
'scheduler'}``, the state dict's keys with a ``module.`` prefix when trained with DDP. Its models
(``--arch resnet18 | resnet50 | mobilenet_v2 | mobilenet_v2_1d2`` with ``--customize``) are
torchvision networks with some stages replaced (``../shared/notes/kerneldna_format.md`` §2). The
conversion renames keys only, to an mmpretrain ``ImageClassifier`` (``backbone.*`` as
:class:`~mmkw.models.KDNAResNet` / :class:`~mmkw.models.KDNAMobileNetV2`, ``head.fc.*`` as
``LinearClsHead``):

- torchvision parts: ResNet names are mmpretrain's; MobileNetV2's ``features.{i}`` become
  ``conv1``, ``layer{l}.{b}.conv.{u}.{conv,bn}``, ``conv2``; ``fc`` / ``classifier.1`` become
  ``head.fc``;
- KernelDNA stages, by :func:`rename_stage_key` (the rules the fixtures of
  ``tests/test_ops/test_kerneldna.py`` check numerically): the release's SE ``se.se.{fc1, bn,
  fc2}`` becomes the child's ``gate.{fc1, norm, fc2}``, its stacked static terms the stage's
  ``statics*.static_filter_attn`` / ``static_spatial_attn``.

The number of children per stage is read off the static terms. Every converted key and shape is
checked against the mmkw model: a checkpoint of another architecture fails with
:class:`ConversionError` naming the first key that differs and both shapes.
"""
import pickle
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn

from .kdna_from_plain import torchvision_mobilenet_v2_to_mmpretrain
from .official import ConversionError, unwrap_state_dict

Shape = Tuple[int, ...]
PathLike = Union[str, Path]

# the release's --arch names -> mmkw backbone config and the mmkw config of the released model
ARCHS: Dict[str, dict] = {
    'resnet18': dict(type='KDNAResNet', depth=18),
    'resnet50': dict(type='KDNAResNet', depth=50),
    'mobilenet_v2': dict(type='KDNAMobileNetV2', widen_factor=1.0),
    'mobilenet_v2_1d2': dict(type='KDNAMobileNetV2', widen_factor=0.5),
}
CONFIGS: Dict[str, str] = {
    'resnet18': 'configs/kdna_resnet/kdna-resnet18_8xb32-90e_in1k.py',
    'resnet50': 'configs/kdna_resnet/kdna-resnet50_8xb32-300e_in1k.py',
    'mobilenet_v2': 'configs/kdna_mobilenet_v2/kdna-mobilenet-v2_8xb32-150e_in1k.py',
    'mobilenet_v2_1d2': 'configs/kdna_mobilenet_v2/kdna-mobilenet-v2-050_8xb32-150e_in1k.py',
}
_ARCH_ALIASES = {'mobilenetv2': 'mobilenet_v2', 'mobilenet_v2_100': 'mobilenet_v2',
                 'mobilenetv2_100': 'mobilenet_v2', 'mobilenet_v2_050': 'mobilenet_v2_1d2',
                 'mobilenetv2_050': 'mobilenet_v2_1d2', 'mobilenet+_v2_1d2': 'mobilenet_v2_1d2'}
# torchvision MobileNetV2 features index of each ShareCluster -> mmpretrain layer
MOBILENET_V2_CLUSTERS = {6: 3, 10: 4, 13: 5, 16: 6}

_SE = {'fc1': 'fc1', 'bn': 'norm', 'fc2': 'fc2'}
_MV2_UNITS = {'pw1': '0.conv', 'bn1': '0.bn', 'dw': '1.conv', 'bn2': '1.bn', 'pw2': '2.conv',
              'bn3': '2.bn'}
_MV2_CHILD = {'bn1': '0.bn', 'dwconv': '1.conv', 'bn2': '1.bn', 'bn3': '2.bn'}


def normalize_arch(arch: str) -> str:
    """The release's ``--arch`` name (``resnet18``, ``resnet50``, ``mobilenet_v2``,
    ``mobilenet_v2_1d2``; a few spellings accepted)."""
    name = arch.strip().lower().replace('-', '_')
    name = _ARCH_ALIASES.get(name, name)
    if name not in ARCHS:
        raise ConversionError(f'unknown arch {arch!r}; the release has {sorted(ARCHS)}')
    return name


# ---------------------------------------------------------------------------- stage rules
def _rename_se(rest: str) -> Optional[str]:
    match = re.match(r'se\.(fc1|bn|fc2)\.(.+)$', rest)
    return f'gate.{_SE[match[1]]}.{match[2]}' if match else None


def _rename_bottleneck(rest: str) -> Optional[str]:
    """A release ``Block``'s ``layers.*`` / ``downsample.{conv,bn}.*`` -> mmpretrain names."""
    match = re.match(r'layers\.((?:conv|bn)[123]\..+)$', rest)
    if match:
        return match[1]
    match = re.match(r'downsample\.(conv|bn)\.(.+)$', rest)
    if match:
        return f'downsample.{0 if match[1] == "conv" else 1}.{match[2]}'
    return None


def _rename_child_bottleneck(rest: str) -> Optional[str]:
    """A release ``Block_Share3x3`` (``half1``: conv1, bn1, se; ``half2``: bn2, conv3, bn3)."""
    match = re.match(r'half[12]\.((?:conv1|bn1|bn2|conv3|bn3)\..+)$', rest)
    if match:
        return match[1]
    match = re.match(r'half1\.se\.(.+)$', rest)
    if match:
        gate = _rename_se(match[1])
        return None if gate is None else f'conv2.{gate}'
    return None


def _rename_basic(key: str, n_kids: int) -> Optional[str]:
    """ResNet-18's ``NewLayer`` (see ``mmkw.models.backbones.kdna_resnet``)."""
    match = re.fullmatch(r'static_(filter|spatial)_attn', key)
    if match:
        return f'statics.{key}'
    match = re.match(r'(conv1|bn1|downsample\.[01])\.(.+)$', key)
    if match:
        return f'0.{key}'
    match = re.match(r'se\.(\d+)\.(.+)$', key)
    if match:
        gate, i = _rename_se(match[2]), int(match[1])
        return None if gate is None or i >= n_kids else \
            (f'0.conv2.{gate}' if i == 0 else f'{i}.conv1.{gate}')
    match = re.match(r'bns\.(\d+)\.(.+)$', key)
    if match:
        i = int(match[1])
        return None if i >= n_kids else (f'0.bn2.{match[2]}' if i == 0 else
                                         f'{i}.bn1.{match[2]}')
    match = re.match(r'(conv|bn)(\d+)\.(.+)$', key)
    if match and 2 <= int(match[2]) <= n_kids:  # parent P_j is the release's conv{j+1}
        return f'{int(match[2]) - 1}.{match[1]}2.{match[3]}'
    return None


def _rename_pairs(key: str, n_kids: int) -> Optional[str]:
    """ResNet-50's ``NewLayer3``: block0, then (kids[i], parents[i]) as blocks 2i+1, 2i+2."""
    if re.fullmatch(r'static_(filter|spatial)_attn', key):
        return f'statics.{key}'
    match = re.match(r'block0\.(.+)$', key)
    if match:
        rest = _rename_bottleneck(match[1])
        return None if rest is None else f'0.{rest}'
    match = re.match(r'(kids|parents)\.(\d+)\.(.+)$', key)
    if match and int(match[2]) < n_kids:
        i = int(match[2])
        if match[1] == 'kids':
            rest = _rename_child_bottleneck(match[3])
            return None if rest is None else f'{2 * i + 1}.{rest}'
        rest = _rename_bottleneck(match[3])
        return None if rest is None else f'{2 * i + 2}.{rest}'
    return None


def _rename_shared(key: str, n_kids: int) -> Optional[str]:
    """ResNet-50's ``NewLayer4``: block0, blocks[i] as block i+1, last_block as n+1."""
    if key == 'static_filter_attn2':  # the release's name has a 2 here
        return 'statics.static_filter_attn'
    if key == 'static_spatial_attn':
        return 'statics.static_spatial_attn'
    match = re.match(r'block0\.(.+)$', key)
    if match:
        rest = _rename_bottleneck(match[1])
        return None if rest is None else f'0.{rest}'
    match = re.match(r'blocks\.(\d+)\.(.+)$', key)
    if match and int(match[1]) < n_kids:
        rest = _rename_child_bottleneck(match[2])
        return None if rest is None else f'{int(match[1]) + 1}.{rest}'
    match = re.match(r'last_block\.(.+)$', key)
    if match:
        rest = _rename_bottleneck(match[1])
        return None if rest is None else f'{n_kids + 1}.{rest}'
    return None


def _rename_cluster(key: str, n_kids: int) -> Optional[str]:
    """MobileNetV2's ``ShareCluster``: transition, blocks[i] as block i+1, last_block as n+1."""
    if key == 'static_filter_attn1':
        return 'statics_expand.static_filter_attn'
    if key == 'static_filter_attn3':
        return 'statics_reduce.static_filter_attn'
    match = re.match(r'(transition|last_block)\.layers\.(pw1|bn1|dw|bn2|pw2|bn3)\.(.+)$', key)
    if match:
        block = 0 if match[1] == 'transition' else n_kids + 1
        return f'{block}.conv.{_MV2_UNITS[match[2]]}.{match[3]}'
    match = re.match(r'blocks\.(\d+)\.(.+)$', key)
    if not match or int(match[1]) >= n_kids:
        return None
    block, rest = int(match[1]) + 1, match[2]
    se = re.match(r'se([13])\.(.+)$', rest)
    if se:
        gate = _rename_se(se[2])
        return None if gate is None else f'{block}.conv.{0 if se[1] == "1" else 2}.conv.{gate}'
    unit = re.match(r'(bn1|dwconv|bn2|bn3)\.(.+)$', rest)
    return f'{block}.conv.{_MV2_CHILD[unit[1]]}.{unit[2]}' if unit else None


STAGE_RULES: Dict[str, Callable[[str, int], Optional[str]]] = {
    'basic': _rename_basic, 'pairs': _rename_pairs, 'shared': _rename_shared,
    'cluster': _rename_cluster}


def rename_stage_key(layout: str, key: str, n_kids: int) -> Optional[str]:
    """mmkw's name (relative to the stage) of an official KernelDNA stage key, or None.

    ``layout``: ``'basic'`` (``KDNA_ResNet18.NewLayer``), ``'pairs'`` (``KDNA_ResNet50.NewLayer3``),
    ``'shared'`` (``NewLayer4``) or ``'cluster'`` (``KDNA_MobileNetV2.ShareCluster``).
    """
    if layout not in STAGE_RULES:
        raise ValueError(f'layout must be one of {sorted(STAGE_RULES)}, got {layout!r}')
    return STAGE_RULES[layout](key, n_kids)


def rename_stage_state_dict(layout: str, state_dict: Mapping[str, torch.Tensor],
                            n_kids: int) -> 'OrderedDict[str, torch.Tensor]':
    """Rename a whole official stage state dict (``rename_stage_key``); unknown keys fail."""
    renamed = OrderedDict()
    for key, value in state_dict.items():
        new_key = rename_stage_key(layout, key, n_kids)
        if new_key is None:
            raise ConversionError(f'official {layout!r} stage key {key!r} has no mmkw '
                                  'counterpart')
        renamed[new_key] = value
    return renamed


# ---------------------------------------------------------------------------- whole models
def _children_of(state_dict: Mapping[str, torch.Tensor], key: str, default: int) -> int:
    value = state_dict.get(key)
    return int(value.shape[0]) if value is not None and value.dim() == 5 else default


def _stage_layouts(arch: str, state_dict: Mapping[str, torch.Tensor]
                   ) -> Dict[str, Tuple[str, int]]:
    """Official stage prefix -> (layout, children) of ``arch``; children read off the static
    terms (the release's numbers when absent)."""
    if arch == 'resnet18':
        return {f'layer{s}.': ('basic', _children_of(state_dict, f'layer{s}.static_filter_attn',
                                                     3)) for s in (3, 4)}
    if arch == 'resnet50':
        return {'layer3.': ('pairs', _children_of(state_dict, 'layer3.static_filter_attn', 3)),
                'layer4.': ('shared', _children_of(state_dict, 'layer4.static_filter_attn2', 1))}
    release = dict(zip(MOBILENET_V2_CLUSTERS, (1, 2, 1, 1)))
    return {f'features.{i}.': ('cluster', _children_of(
        state_dict, f'features.{i}.static_filter_attn1', release[i]))
        for i in MOBILENET_V2_CLUSTERS}


def rename_official_key(arch: str, key: str,
                        stages: Mapping[str, Tuple[str, int]]) -> Optional[str]:
    """mmkw's name (``backbone.*`` / ``head.*``) of an official model key, or None."""
    for prefix, (layout, n_kids) in stages.items():
        if key.startswith(prefix):
            rest = rename_stage_key(layout, key[len(prefix):], n_kids)
            if rest is None:
                return None
            if layout == 'cluster':
                return f'backbone.layer{MOBILENET_V2_CLUSTERS[int(prefix.split(".")[1])]}.{rest}'
            return f'backbone.{prefix}{rest}'
    if arch.startswith('resnet'):
        match = re.match(r'fc\.(weight|bias)$', key)
        if match:
            return f'head.fc.{match[1]}'
        return f'backbone.{key}' if re.match(r'(conv1|bn1|layer[12])\.', key) else None
    match = re.match(r'classifier\.1\.(weight|bias)$', key)
    if match:
        return f'head.fc.{match[1]}'
    new_key = torchvision_mobilenet_v2_to_mmpretrain(key)
    return None if new_key is None else f'backbone.{new_key}'


def build_backbone(arch: str, n_kids: Tuple[int, ...]) -> nn.Module:
    """The mmkw backbone of the release's ``arch`` with the given children per stage."""
    from mmkw.models.backbones.kdna_mobilenet_v2 import KDNAMobileNetV2
    from mmkw.models.backbones.kdna_resnet import KDNAResNet
    cfg = dict(ARCHS[arch])
    kind = cfg.pop('type')
    if kind == 'KDNAResNet':
        return KDNAResNet(n_kids=n_kids, **cfg)
    return KDNAMobileNetV2(n_kids=n_kids, **cfg)


def expected_shapes(arch: str, n_kids: Tuple[int, ...], num_classes: int = 1000
                    ) -> 'OrderedDict[str, Shape]':
    """Keys and shapes of the mmpretrain ``ImageClassifier`` of ``arch`` (``backbone.*`` and a
    ``LinearClsHead``'s ``head.fc.*``)."""
    try:
        backbone = build_backbone(arch, n_kids)
    except (ValueError, KeyError) as error:
        raise ConversionError(f'mmkw cannot build KernelDNA {arch} with n_kids={n_kids}: '
                              f'{error}') from error
    shapes = OrderedDict((f'backbone.{k}', tuple(v.shape))
                         for k, v in backbone.state_dict().items())
    shapes['head.fc.weight'] = (num_classes, backbone.feat_dim)
    shapes['head.fc.bias'] = (num_classes, )
    return shapes


def check_kernel_dna(state_dict: Mapping[str, torch.Tensor]) -> None:
    """Refuse a plain network (``main.py`` without ``--customize``) with what to do instead."""
    if not any('static_' in k for k in state_dict):
        raise ConversionError('no KernelDNA static terms in this checkpoint: it looks like a '
                              'plain network (main.py without --customize). Start a KernelDNA '
                              "backbone from it with init_cfg=dict(type='KDNAFromPlain', ...) "
                              'instead (docs/kerneldna.md)')


def detect_arch(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The release's ``--arch`` of a KernelDNA state dict, from its keys."""
    keys = list(state_dict)
    check_kernel_dna(state_dict)
    if 'layer3.static_spatial_attn' in state_dict and any(k.startswith('layer3.se.')
                                                          for k in keys):
        return 'resnet18'
    if any(k.startswith('layer3.block0.') for k in keys):
        return 'resnet50'
    if any(re.match(r'features\.\d+\.static_filter_attn1$', k) for k in keys):
        stem = state_dict.get('features.0.1.weight')
        width = None if stem is None else int(stem.shape[0])
        if width == 32:
            return 'mobilenet_v2'
        if width == 16:
            return 'mobilenet_v2_1d2'
        raise ConversionError(f'a KernelDNA MobileNetV2 with a {width}-channel stem is neither '
                              'release (32: mobilenet_v2, 16: mobilenet_v2_1d2): pass --arch')
    raise ConversionError(f'cannot tell the KernelDNA architecture from the keys (first: '
                          f'{keys[:4]}): pass --arch ({", ".join(sorted(ARCHS))})')


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], arch: str,
                       source: str = 'the checkpoint'
                       ) -> Tuple['OrderedDict[str, torch.Tensor]', Tuple[int, ...]]:
    """Rename an official state dict for ``arch`` and check it key by key against the mmkw
    model. Returns the converted state dict (in the model's order) and the children per stage.

    Raises :class:`ConversionError` naming the first official key without a counterpart, the
    first shape that differs (both shapes) or the first key the model needs and the checkpoint
    lacks, with the number of further mismatches.
    """
    stages = _stage_layouts(arch, state_dict)
    n_kids = tuple(n for _, n in stages.values())
    head = state_dict.get('fc.weight', state_dict.get('classifier.1.weight'))
    num_classes = int(head.shape[0]) if head is not None else 1000
    expected = expected_shapes(arch, n_kids, num_classes)
    errors: List[str] = []
    converted: Dict[str, torch.Tensor] = {}
    origin: Dict[str, str] = {}
    for key, tensor in state_dict.items():
        new_key = rename_official_key(arch, key, stages)
        if new_key is None or new_key not in expected:
            errors.append(f'official key {key!r}' + ('' if new_key is None else
                                                     f' (mmkw name {new_key!r})')
                          + ' has no counterpart in the model')
            continue
        if new_key in origin:
            errors.append(f'official keys {origin[new_key]!r} and {key!r} both map to '
                          f'{new_key!r}')
            continue
        origin[new_key] = key
        if tuple(tensor.shape) != expected[new_key]:
            errors.append(f'official key {key!r} (mmkw name {new_key!r}) has shape '
                          f'{list(tensor.shape)} but the model needs {list(expected[new_key])}')
            continue
        converted[new_key] = tensor
    errors += [f'the model needs {key!r} (shape {list(shape)}), which {source} lacks'
               for key, shape in expected.items() if key not in origin]
    if errors:
        more = f' ({len(errors) - 1} more mismatches)' if len(errors) > 1 else ''
        raise ConversionError(f'{source} does not match mmkw\'s KernelDNA {arch} classifier '
                              f'(n_kids {n_kids}, {num_classes} classes): {errors[0]}{more}')
    return OrderedDict((k, converted[k]) for k in expected), n_kids


@dataclass
class KDNAConversion:
    """A converted checkpoint: state dict (``backbone.*``, ``head.*``), meta, notes."""
    state_dict: 'OrderedDict[str, torch.Tensor]'
    meta: dict
    notes: List[str] = field(default_factory=list)

    def checkpoint(self) -> dict:
        """``{'state_dict', 'meta'}`` as mmengine saves it (loads with ``weights_only=True``)."""
        return dict(state_dict=OrderedDict((k, v.detach().contiguous())
                                           for k, v in self.state_dict.items()),
                    meta=dict(self.meta))


def load_checkpoint_file(path: PathLike, trust: bool = False) -> Mapping:
    """Load a checkpoint on the CPU with torch's safe loader (``main.py``'s optimizer and
    scheduler states are plain data); ``trust=True`` unpickles fully (trusted files only)."""
    import mmkw  # noqa: F401  (allow-lists mmengine's checkpoint metadata types)
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f'checkpoint {str(path)!r} does not exist')
    try:
        return torch.load(path, map_location='cpu', weights_only=not trust)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = next((line for line in lines if 'WeightsUnpickler' in line),
                      lines[0] if lines else repr(error))
        raise ConversionError(f'{path} holds objects that torch\'s safe loader refuses '
                              f'({reason}); if the file comes from a source you trust, rerun '
                              'with --trust-checkpoint to unpickle it fully') from None


def convert_kdna_official(checkpoint: Union[PathLike, Mapping], arch: Optional[str] = None,
                          trust: bool = False) -> KDNAConversion:
    """Convert a checkpoint of the official KernelDNA ``main.py`` (a path, a loaded checkpoint or
    a state dict; ``module.`` prefixes removed). ``arch`` (the release's ``--arch``) defaults to
    the checkpoint's ``'arch'`` entry, else is inferred from the keys."""
    source = 'the checkpoint'
    if isinstance(checkpoint, (str, Path)):
        source = Path(checkpoint).name
        checkpoint = load_checkpoint_file(checkpoint, trust)
    state_dict, _ = unwrap_state_dict(checkpoint)
    saved_arch = checkpoint.get('arch') if isinstance(checkpoint, Mapping) else None
    check_kernel_dna(state_dict)
    if arch is None and isinstance(saved_arch, str) and saved_arch in ARCHS:
        arch = saved_arch
    arch = normalize_arch(arch) if arch is not None else detect_arch(state_dict)
    converted, n_kids = convert_state_dict(state_dict, arch, source)
    notes = [f'{source}: KernelDNA {arch} classifier (children per stage {n_kids})']
    from mmkw import __version__
    meta = dict(converted_from='haiduo/KernelDNA', converter='mmkw.converters.kdna_official',
                source=source, arch=arch, n_kids=list(n_kids), config=CONFIGS.get(arch),
                mmkw_version=__version__)
    return KDNAConversion(converted, meta, notes)


def save_checkpoint(result: KDNAConversion, path: PathLike) -> Path:
    """Write ``result`` as an mmengine-style checkpoint, creating folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(result.checkpoint(), path)
    return path
