"""Convert the official Kernel Warehouse checkpoints (github.com/OSVAI/KernelWarehouse) to mmkw.

The release saves its ImageNet models as ``{'model': state_dict, 'optimizer': ..., 'args': ...,
['model_ema': ...]}`` and its Mask R-CNN models as mmdet 2.x checkpoints (``{'state_dict': ...,
'meta': ...}``). mmkw's KW layers already use the release's names inside a network
(``warehouse_manager.weights.{w}``, ``<conv>.attention.{fc1,norm1,fc2,fc3,basis_bias}``, a KW
conv's ``bias``; see ``../shared/notes/official_kw_format.md``), and mmkw's backbones reserve
their warehouses in the release's order, so a conversion only renames module paths:

- ResNet (``kw_resnet18/50``, plain ``resnet18/50``): torchvision names in both, so the
  backbone keys only gain ``backbone.``; ``fc`` becomes ``head.fc`` (mmpretrain's
  ``LinearClsHead``).
- MobileNetV2 (``kw_mobilenetv2_*``, ``kw1d2x_mobilenetv2_*``, plain ``mobilenetv2_*``): the
  release is torchvision-like (``features.{i}`` with ``ConvBNReLU`` = ``(conv, bn, relu6)``
  sequentials and a block's linear conv and norm as two more entries), mmkw uses mmpretrain's
  names (``conv1``, ``layer{l}.{b}.conv.{u}.{conv,bn}``, ``conv2``). ``features.0`` is the stem,
  ``features.1..17`` the blocks of the seven layers in order, ``features.18`` the last 1x1 conv.
  The classifier (``classifier`` or ``classifier.1``) becomes ``head.fc``. The release's KW
  (1/2x) classifier is a ``KWLinear`` (``classifier.1.conv.*``, a 1-D KW conv) whose warehouse
  is the release's last one, ``[n, classes, cell_in, 1]``: it becomes the
  ``KWLinearClsHead``'s ``head.warehouse_manager.weights.0`` with a trailing unit dimension.
- ConvNeXt (``kw_convnext_tiny``, plain ``convnext_tiny``): facebookresearch names; a block's
  ``dwconv``/``pwconv1``/``pwconv2`` become mmpretrain's ``depthwise_conv``/``pointwise_conv1``/
  ``pointwise_conv2``, the layer scale ``gamma`` (``[1, C, 1, 1]`` in the KW release) is
  flattened to ``[C]``, the final ``norm`` becomes ``backbone.norm3`` and ``head`` ``head.fc``.
- Detection checkpoints (keys ``backbone.*``, ``neck.*``, ``rpn_head.*``, ``roi_head.*``): the
  backbone part is renamed as above and the ImageNet classifier the release's detection
  backbones still carry (``backbone.fc``, ``backbone.classifier``) is dropped; the neck and
  heads keep their names, which mmdet 2.x and 3.x share for Mask R-CNN with FPN. The result is a
  full mmdet 3.x detector checkpoint, which also serves as ``init_cfg=dict(type='Pretrained',
  prefix='backbone.', ...)`` of a backbone.

The architecture comes from the key structure (block counts, widths) and the budget from the
warehouse shapes, by building the candidate mmkw models and comparing; either can be given
instead. The converted state dict is checked against the target model key by key: an unknown
key, a missing key or a shape mismatch raises :class:`ConversionError` naming the first one.
"""
import argparse
import math
import pickle
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

Shape = Tuple[int, ...]
PathLike = Union[str, Path]


class ConversionError(ValueError):
    """The checkpoint cannot be converted to (or does not match) the requested mmkw model."""


# ----------------------------------------------------------------------------- architectures
# mmkw backbone arguments of every architecture the release's model files can build, under the
# release's model names without their 'kw_' / 'kw1d2x_' prefixes.
ARCHS: Dict[str, Tuple[str, dict]] = {
    'resnet18': ('resnet', dict(depth=18)),
    'resnet34': ('resnet', dict(depth=34)),
    'resnet50': ('resnet', dict(depth=50)),
    'resnet101': ('resnet', dict(depth=101)),
    'resnet152': ('resnet', dict(depth=152)),
    'mobilenetv2_050': ('mobilenet_v2', dict(widen_factor=0.5)),
    'mobilenetv2_075': ('mobilenet_v2', dict(widen_factor=0.75)),
    'mobilenetv2_100': ('mobilenet_v2', dict(widen_factor=1.0)),
    'mobilenetv2_140': ('mobilenet_v2', dict(widen_factor=1.4)),
    'convnext_tiny': ('convnext', dict(arch='tiny')),
    'convnext_small': ('convnext', dict(arch='small')),
    'convnext_base': ('convnext', dict(arch='base')),
    'convnext_large': ('convnext', dict(arch='large')),
    'convnext_xlarge': ('convnext', dict(arch='xlarge')),
}

# (blocks per stage, bottleneck) -> depth of the torchvision-style ResNets
_RESNET_DEPTHS = {((2, 2, 2, 2), False): 18, ((3, 4, 6, 3), False): 34,
                  ((3, 4, 6, 3), True): 50, ((3, 4, 23, 3), True): 101,
                  ((3, 8, 36, 3), True): 152}

# Budgets tried when inferring one from the warehouse shapes: the release's first, then other
# presets the release's code could also have built.
RELEASED_BUDGETS = {'resnet': ('1/4x', '1/2x', '1x', '2x', '4x'),
                    'mobilenet_v2': ('1/2x', '1x', '4x'),
                    'convnext': ('1x', )}
_OTHER_BUDGETS = {'resnet': (), 'mobilenet_v2': ('2x', ), 'convnext': ('1/2x', '2x', '4x')}

# The release's nonlocal-basis ratio (ResNet50 KW 1/2x), assumed when fc3 keys are present.
RELEASE_NONLOCAL_BASIS_RATIO = 1 / 16

# mmkw configs of the released models: the path shown after a conversion, and the model the
# tests load every converted family into.
CLASSIFICATION_CONFIGS: Dict[Tuple[str, Optional[str]], str] = {
    ('resnet18', '1/4x'): 'configs/kw_resnet/kw0.25x-resnet18_8xb512-adv-300e_in1k.py',
    ('resnet18', '1/2x'): 'configs/kw_resnet/kw0.5x-resnet18_8xb512-adv-300e_in1k.py',
    ('resnet18', '1x'): 'configs/kw_resnet/kw1x-resnet18_8xb512-adv-300e_in1k.py',
    ('resnet18', '2x'): 'configs/kw_resnet/kw2x-resnet18_8xb512-adv-300e_in1k.py',
    ('resnet18', '4x'): 'configs/kw_resnet/kw4x-resnet18_8xb512-adv-300e_in1k.py',
    ('resnet18', None): 'configs/kw_resnet/resnet18_8xb512-adv-300e_in1k.py',
    ('resnet50', '1/2x'): 'configs/kw_resnet/kw0.5x-resnet50_8xb512-adv-300e_in1k.py',
    ('resnet50', '1x'): 'configs/kw_resnet/kw1x-resnet50_8xb512-adv-300e_in1k.py',
    ('resnet50', '4x'): 'configs/kw_resnet/kw4x-resnet50_8xb512-adv-300e_in1k.py',
    ('resnet50', None): 'configs/kw_resnet/resnet50_8xb512-adv-300e_in1k.py',
    ('mobilenetv2_100', '1/2x'): 'configs/kw_mobilenet_v2/kw0.5x-mobilenet-v2_8xb32-150e_in1k.py',
    ('mobilenetv2_100', '1x'): 'configs/kw_mobilenet_v2/kw1x-mobilenet-v2_8xb32-150e_in1k.py',
    ('mobilenetv2_100', '4x'): 'configs/kw_mobilenet_v2/kw4x-mobilenet-v2_8xb32-150e_in1k.py',
    ('mobilenetv2_100', None): 'configs/kw_mobilenet_v2/mobilenet-v2_8xb32-150e_in1k.py',
    ('mobilenetv2_050', '1/2x'):
    'configs/kw_mobilenet_v2/kw0.5x-mobilenet-v2-050_8xb32-150e_in1k.py',
    ('mobilenetv2_050', '1x'): 'configs/kw_mobilenet_v2/kw1x-mobilenet-v2-050_8xb32-150e_in1k.py',
    ('mobilenetv2_050', '4x'): 'configs/kw_mobilenet_v2/kw4x-mobilenet-v2-050_8xb32-150e_in1k.py',
    ('mobilenetv2_050', None): 'configs/kw_mobilenet_v2/mobilenet-v2-050_8xb32-150e_in1k.py',
    ('convnext_tiny', '1x'): 'configs/kw_convnext/kw1x-convnext-tiny_8xb512-adv-300e_in1k.py',
    ('convnext_tiny', None): 'configs/kw_convnext/convnext-tiny_8xb512-adv-300e_in1k.py',
}
DETECTION_CONFIGS: Dict[Tuple[str, Optional[str]], str] = {
    ('resnet50', '1x'): 'configs/mask_rcnn/mask-rcnn_kw1x-r50_fpn_1x_coco.py',
    ('resnet50', '4x'): 'configs/mask_rcnn/mask-rcnn_kw4x-r50_fpn_1x_coco.py',
    ('resnet50', None): 'configs/mask_rcnn/mask-rcnn_r50_fpn_adamw-1x_coco.py',
    ('mobilenetv2_100', '1x'): 'configs/mask_rcnn/mask-rcnn_kw1x-mobilenet-v2_fpn_1x_coco.py',
    ('mobilenetv2_100', '4x'): 'configs/mask_rcnn/mask-rcnn_kw4x-mobilenet-v2_fpn_1x_coco.py',
    ('mobilenetv2_100', None): 'configs/mask_rcnn/mask-rcnn_mobilenet-v2_fpn_adamw-1x_coco.py',
    ('convnext_tiny', '1x'): 'configs/mask_rcnn/mask-rcnn_kw1x-convnext-t_fpn_1x_coco.py',
    ('convnext_tiny', None): 'configs/mask_rcnn/mask-rcnn_convnext-t_fpn_adamw-1x_coco.py',
}

TASKS = ('classification', 'detection')
_BUDGET_ALIASES = {
    '1/4x': '1/4x', '1d4x': '1/4x', '0.25x': '1/4x', '0.25': '1/4x',
    '1/2x': '1/2x', '1d2x': '1/2x', '0.5x': '1/2x', '0.5': '1/2x',
    '1x': '1x', '1': '1x', '1.0': '1x', '1.0x': '1x',
    '2x': '2x', '2': '2x', '4x': '4x', '4': '4x',
    'none': None, 'plain': None, 'baseline': None,
}


def normalize_arch(arch: str) -> str:
    """Canonical architecture name: the release's model names are accepted with or without their
    ``kw_`` / ``kw1d2x_`` prefixes (``kw_resnet50``, ``kw1d2x_mobilenetv2_050``, ``resnet50``)."""
    name = arch.strip().lower().replace('-', '_')
    name = re.sub(r'^kw(\d+d\d+x|\d+x)?_', '', name)
    name = name.replace('mobilenet_v2', 'mobilenetv2')
    if name == 'mobilenetv2':
        name = 'mobilenetv2_100'
    if name not in ARCHS:
        raise ConversionError(f'unknown --arch {arch!r}; choose from {sorted(ARCHS)}')
    return name


def normalize_budget(budget: Optional[str]) -> Optional[str]:
    """Canonical budget name (``'1/4x'``, ``'1/2x'``, ``'1x'``, ``'2x'``, ``'4x'``; also the
    release's file names ``'1d2x'``, ``'1d4x'``), None (or ``'none'``) for a plain network; other
    budgets mmkw can parse pass unchanged."""
    if budget is None:
        return None
    text = str(budget).strip().lower()
    if text in _BUDGET_ALIASES:
        return _BUDGET_ALIASES[text]
    from mmkw.ops import Budget
    try:
        Budget.parse(text)
    except (TypeError, ValueError) as error:
        raise ConversionError(f'invalid --budget {budget!r}: {error}') from None
    return text


@dataclass(frozen=True)
class Target:
    """The mmkw model a checkpoint converts to.

    Args:
        arch: a key of :data:`ARCHS`.
        budget: canonical budget, None for the plain network (``budget=None`` backbones).
        task: 'classification' (an mmpretrain ``ImageClassifier``: ``backbone.*``, ``head.*``)
            or 'detection' (an mmdet detector: ``backbone.*`` renamed, the rest kept).
        nonlocal_basis_ratio: the attention's nonlocal-basis ratio (ResNet only; 1: off).
        num_classes: classes of the classifier head.
    """
    arch: str
    budget: Optional[str]
    task: str = 'classification'
    nonlocal_basis_ratio: float = 1.0
    num_classes: int = 1000

    @property
    def family(self) -> str:
        return ARCHS[self.arch][0]

    @property
    def kw_head(self) -> bool:
        """The release's KW (1/2x) MobileNetV2 has a KW classifier (``KWLinearClsHead``)."""
        return (self.family == 'mobilenet_v2' and self.budget == '1/2x'
                and self.task == 'classification')

    @property
    def config(self) -> Optional[str]:
        """The mmkw config of this released model (relative to the repo root), if any."""
        table = CLASSIFICATION_CONFIGS if self.task == 'classification' else DETECTION_CONFIGS
        return table.get((self.arch, self.budget))

    def describe(self) -> str:
        model = f'plain {self.arch}' if self.budget is None else f'KW ({self.budget}) {self.arch}'
        if self.nonlocal_basis_ratio < 1:
            model += f' with nonlocal basis ratio {self.nonlocal_basis_ratio:g}'
        if self.task == 'classification':
            return f'{model} classifier ({self.num_classes} classes)'
        return f'{model} detector backbone'

    def build_backbone(self) -> nn.Module:
        """The mmkw backbone (outputs as in the mmkw configs of this task)."""
        from mmkw.models import KWConvNeXt, KWMobileNetV2, KWResNet
        family, kwargs = ARCHS[self.arch]
        detection = self.task == 'detection'
        if family != 'resnet' and self.nonlocal_basis_ratio < 1:
            raise ConversionError(f'{self.arch}: the nonlocal basis is a ResNet option of the '
                                  'release; this checkpoint has fc3/basis_bias keys')
        if family == 'resnet':
            return KWResNet(budget=self.budget, nonlocal_basis_ratio=self.nonlocal_basis_ratio,
                            out_indices=(0, 1, 2, 3) if detection else (3, ), **kwargs)
        if family == 'mobilenet_v2':
            return KWMobileNetV2(budget=self.budget,
                                 out_indices=(1, 2, 4, 7) if detection else (7, ), **kwargs)
        # detection: a LayerNorm per output stage (norm0..norm3); classification: the final one
        return KWConvNeXt(budget=self.budget, layout='release',
                          out_indices=(0, 1, 2, 3) if detection else (-1, ),
                          gap_before_final_norm=not detection, **kwargs)

    def build_head(self, in_channels: int) -> Optional[nn.Module]:
        """The classifier head of the mmkw configs (None for detection)."""
        if self.task != 'classification':
            return None
        if self.kw_head:
            from mmkw.models import KWLinearClsHead
            return KWLinearClsHead(self.num_classes, in_channels)
        from mmpretrain.models.heads import LinearClsHead
        return LinearClsHead(self.num_classes, in_channels)


@lru_cache(maxsize=64)
def _expected_shapes(target: Target) -> Tuple[Tuple[str, Shape], ...]:
    # Building a model is the only reliable source of its names and shapes; cached because
    # budget inference builds each candidate once per process.
    try:
        backbone = target.build_backbone()
    except (ValueError, KeyError, RuntimeError) as error:
        raise ConversionError(f'mmkw cannot build {target.describe()}: {error}') from error
    shapes = [(f'backbone.{k}', tuple(v.shape)) for k, v in backbone.state_dict().items()]
    head = target.build_head(backbone.feat_dim)
    if head is not None:
        shapes += [(f'head.{k}', tuple(v.shape)) for k, v in head.state_dict().items()]
    return tuple(shapes)


def expected_shapes(target: Target) -> 'OrderedDict[str, Shape]':
    """State-dict keys and shapes of the mmkw model of ``target`` (``backbone.*``, ``head.*``)."""
    return OrderedDict(_expected_shapes(target))


def expected_shapes_from_config(config: Union[PathLike, Any]) -> 'OrderedDict[str, Shape]':
    """State-dict keys and shapes of the model of an mmpretrain or mmdet config (a path or an
    mmengine ``Config``), e.g. a Mask R-CNN config to check a detector checkpoint in full."""
    from mmkw.analysis.models import build_model_from_config
    model = build_model_from_config(str(config) if isinstance(config, Path) else config)
    return OrderedDict((k, tuple(v.shape)) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------------- loading
def unwrap_state_dict(checkpoint: Mapping, key: Optional[str] = None
                      ) -> Tuple['OrderedDict[str, torch.Tensor]', dict]:
    """The state dict inside a checkpoint: ``checkpoint[key]``, else its ``'state_dict'`` (mmdet,
    mmengine) or ``'model'`` (the release's ImageNet training), else the checkpoint itself when
    it holds only tensors. A DistributedDataParallel ``module.`` prefix is removed.

    Returns the state dict and ``{'source_key': ..., 'has_ema': ...}``.
    """
    if not isinstance(checkpoint, Mapping):
        raise ConversionError(f'expected a checkpoint dict, got {type(checkpoint).__name__}')
    if key is not None:
        if key not in checkpoint:
            raise ConversionError(f'the checkpoint has no {key!r}; its top-level keys are '
                                  f'{sorted(map(str, checkpoint))}')
        source_key, state_dict = key, checkpoint[key]
    elif isinstance(checkpoint.get('state_dict'), Mapping):
        source_key, state_dict = 'state_dict', checkpoint['state_dict']
    elif isinstance(checkpoint.get('model'), Mapping):
        source_key, state_dict = 'model', checkpoint['model']
    elif checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        source_key, state_dict = None, checkpoint
    else:
        raise ConversionError('cannot find the state dict: no "state_dict" or "model" entry and '
                              'not a bare state dict; top-level keys: '
                              f'{sorted(map(str, checkpoint))} (choose one with --key)')
    tensors = OrderedDict((str(k), v) for k, v in state_dict.items() if isinstance(v, torch.Tensor))
    if not tensors:
        raise ConversionError(f'the state dict {source_key or "(bare)"} holds no tensors')
    if all(k.startswith('module.') for k in tensors):
        tensors = OrderedDict((k[len('module.'):], v) for k, v in tensors.items())
    info = dict(source_key=source_key,
                has_ema=isinstance(checkpoint.get('model_ema'), Mapping) and key != 'model_ema')
    return tensors, info


def load_official_checkpoint(path: PathLike, key: Optional[str] = None, trust: bool = False
                             ) -> Tuple['OrderedDict[str, torch.Tensor]', dict]:
    """Load an official checkpoint on the CPU and return its state dict (see
    :func:`unwrap_state_dict`).

    The release saves its training ``args`` (an ``argparse.Namespace``) next to the weights;
    that type is allowed in torch's safe (``weights_only``) loader. Anything else that the safe
    loader refuses needs ``trust=True`` (full unpickling: only for files from a trusted source).
    """
    import mmkw  # noqa: F401  (allow-lists the numpy types of mmengine/mmcv checkpoint metas)
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f'checkpoint {str(path)!r} does not exist')
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location='cpu', weights_only=not trust)
    except pickle.UnpicklingError as error:
        # torch's message is long; its 'WeightsUnpickler error' line names the refused type
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = next((line for line in lines if 'WeightsUnpickler' in line),
                      lines[0] if lines else repr(error))
        raise ConversionError(
            f'{path} holds objects that torch\'s safe loader refuses ({reason}); if the file '
            'comes from a source you trust (the official release), rerun with '
            '--trust-checkpoint to unpickle it fully') from None
    return unwrap_state_dict(checkpoint, key)


# ----------------------------------------------------------------------------- inference
def detect_task(state_dict: Mapping[str, torch.Tensor]) -> str:
    """'detection' for mmdet checkpoints (keys under ``backbone.``), else 'classification'."""
    return 'detection' if any(k.startswith('backbone.') for k in state_dict) else 'classification'


def _backbone_part(state_dict: Mapping[str, torch.Tensor], task: str) -> Dict[str, torch.Tensor]:
    if task == 'classification':
        return dict(state_dict)
    return {k[len('backbone.'):]: v for k, v in state_dict.items() if k.startswith('backbone.')}


def _max_index(keys: Sequence[str], pattern: str) -> Dict[int, int]:
    """For keys matching ``pattern`` (groups: outer, inner index): outer -> max inner + 1."""
    counts: Dict[int, int] = {}
    for key in keys:
        match = re.match(pattern, key)
        if match:
            outer, inner = int(match[1]), int(match[2])
            counts[outer] = max(counts.get(outer, 0), inner + 1)
    return counts


def detect_arch(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The architecture of an official (backbone) state dict, from its key structure."""
    keys = list(state_dict)
    choices = ', '.join(sorted(ARCHS))
    if any(k.startswith('features.') for k in keys):
        stem = state_dict.get('features.0.1.weight')
        if stem is None:
            raise ConversionError('a MobileNetV2-like checkpoint without the stem norm '
                                  f'"features.0.1.weight": pass --arch ({choices})')
        from mmkw.models.backbones.mobilenet_v2 import make_divisible
        names = [name for name, (family, kwargs) in ARCHS.items() if family == 'mobilenet_v2'
                 and make_divisible(32 * kwargs['widen_factor'], 8) == stem.shape[0]]
        if len(names) != 1:
            raise ConversionError(f'cannot tell the MobileNetV2 width from a {stem.shape[0]}-'
                                  f'channel stem: pass --arch ({choices})')
        return names[0]
    if any(k.startswith('downsample_layers.') for k in keys):
        from mmkw.models import KWConvNeXt
        depths = _max_index(keys, r'stages\.(\d+)\.(\d+)\.')
        depths = [depths.get(i, 0) for i in range(max(depths, default=-1) + 1)]
        stem_norm = state_dict.get('downsample_layers.0.1.weight')
        width = None if stem_norm is None else stem_norm.shape[0]
        for name, settings in KWConvNeXt.arch_settings.items():
            if settings['depths'] == depths and settings['channels'][0] == width:
                return f'convnext_{name}'
        raise ConversionError(f'a ConvNeXt with stage depths {depths} and stem width {width} is '
                              f'none of {sorted(KWConvNeXt.arch_settings)}: '
                              f'pass --arch ({choices})')
    if any(k.startswith('layer1.') for k in keys):
        blocks = _max_index(keys, r'layer(\d+)\.(\d+)\.')
        blocks = tuple(blocks.get(i, 0) for i in range(1, 5))
        bottleneck = any(re.match(r'layer\d+\.\d+\.conv3\.', k) for k in keys)
        depth = _RESNET_DEPTHS.get((blocks, bottleneck))
        if depth is None:
            raise ConversionError(f'a ResNet with {blocks} blocks per stage '
                                  f'({"bottleneck" if bottleneck else "basic"}) is no standard '
                                  f'depth: pass --arch ({choices})')
        return f'resnet{depth}'
    raise ConversionError('cannot tell the architecture: no ResNet ("layer1."), MobileNetV2 '
                          '("features.") or ConvNeXt ("downsample_layers.") keys; first keys: '
                          f'{keys[:5]}. Pass --arch ({choices}) and --budget')


def _official_warehouses(backbone: Mapping[str, torch.Tensor]) -> List[Shape]:
    indices = {int(m[1]): tuple(v.shape) for k, v in backbone.items()
               for m in [re.fullmatch(r'warehouse_manager\.weights\.(\d+)', k)] if m}
    return [indices[i] for i in sorted(indices)]


def _num_classes(backbone: Mapping[str, torch.Tensor], family: str) -> Optional[int]:
    names = {'resnet': ('fc.bias', 'fc.weight'),
             'mobilenet_v2': ('classifier.bias', 'classifier.1.bias', 'classifier.1.conv.bias',
                              'classifier.weight', 'classifier.1.weight'),
             'convnext': ('head.bias', 'head.weight')}[family]
    for name in names:
        if name in backbone:
            return int(backbone[name].shape[0])
    return None


def _candidate_warehouses(target: Target) -> Optional[List[Shape]]:
    """Warehouse shapes of ``target`` as the release stores them (its KW classifier is a 1-D
    conv: no trailing unit dimension), or None when mmkw cannot build that budget."""
    try:
        shapes = expected_shapes(target)
    except ConversionError:
        return None
    found = [shape for key, shape in shapes.items()
             if re.fullmatch(r'backbone\.warehouse_manager\.weights\.\d+', key)]
    found += [shape[:-1] for key, shape in shapes.items()
              if re.fullmatch(r'head\.warehouse_manager\.weights\.\d+', key)]
    return found


def _short(shapes: Sequence[Shape], limit: int = 4) -> str:
    text = ', '.join(str(list(s)) for s in shapes[:limit])
    return text + (f', ... ({len(shapes)} in all)' if len(shapes) > limit else '')


def _match_budget(warehouses: List[Shape], arch: str, task: str, num_classes: int) -> str:
    family = ARCHS[arch][0]
    tried: List[str] = []
    for pool in (RELEASED_BUDGETS[family], _OTHER_BUDGETS[family]):
        matches = [b for b in pool
                   if _candidate_warehouses(Target(arch, b, task, 1.0, num_classes)) == warehouses]
        tried += pool
        if len(matches) > 1:
            raise ConversionError(f'the warehouse shapes fit several budgets of {arch} '
                                  f'({matches}): pass --budget')
        if matches:
            return matches[0]
    raise ConversionError(
        f'cannot infer the budget: the {len(warehouses)} warehouses of this checkpoint '
        f'({_short(warehouses)}) match no mmkw {arch} of budget {", ".join(tried)}. Pass '
        '--arch and --budget (the conversion then names the first key that differs)')


_INFER = 'infer'


def infer_target(state_dict: Mapping[str, torch.Tensor], arch: Optional[str] = None,
                 budget: Optional[str] = _INFER, task: Optional[str] = None,
                 nonlocal_basis_ratio: Optional[float] = None,
                 num_classes: Optional[int] = None) -> Target:
    """The mmkw model of an official state dict; each argument given is taken as is.

    ``budget`` left at ``'infer'`` is found by comparing the checkpoint's warehouse shapes with
    those of the candidate mmkw models (none: a plain network); ``budget=None`` asks for the
    plain network. ``nonlocal_basis_ratio`` defaults to the release's 1/16 when the attentions
    have ``fc3`` (a nonlocal basis), else 1.
    """
    task = task or detect_task(state_dict)
    if task not in TASKS:
        raise ConversionError(f'task must be one of {TASKS}, got {task!r}')
    backbone = _backbone_part(state_dict, task)
    if not backbone:
        raise ConversionError('a detection checkpoint without "backbone." keys')
    arch = normalize_arch(arch) if arch else detect_arch(backbone)
    family = ARCHS[arch][0]
    if num_classes is None:
        num_classes = (_num_classes(backbone, family) if task == 'classification' else None) or 1000
    if budget == _INFER:
        warehouses = _official_warehouses(backbone)
        if warehouses:
            budget = _match_budget(warehouses, arch, task, num_classes)
        elif any('.attention.' in k for k in backbone):
            raise ConversionError('the checkpoint has KW attentions but no '
                                  '"warehouse_manager.weights.*": pass --budget')
        else:
            budget = None
    else:
        budget = normalize_budget(budget)
    if nonlocal_basis_ratio is None:
        basis = any(re.search(r'\.attention\.(fc3\.weight|basis_bias)$', k) for k in backbone)
        nonlocal_basis_ratio = RELEASE_NONLOCAL_BASIS_RATIO if basis else 1.0
    return Target(arch, budget, task, float(nonlocal_basis_ratio), int(num_classes))


# ----------------------------------------------------------------------------- renaming
# A rename rule maps a key of the official backbone/classifier to (part, mmkw key inside the
# part, may_reshape), part being 'backbone' or 'head'; None: no counterpart (an error).
Renamed = Optional[Tuple[str, str, bool]]


def _rename_resnet(key: str, layout: dict) -> Renamed:
    if re.match(r'fc\.(weight|bias)$', key):
        return 'head', key, False
    if re.match(r'(conv1|bn1|layer\d+|warehouse_manager)\.', key):
        return 'backbone', key, False
    return None


def _mobilenet_units(arch: str) -> List[Tuple[str, Optional[int]]]:
    """``features.{i}`` -> (mmkw module, conv units of a block or None for a conv-bn-act)."""
    from mmkw.models import KWMobileNetV2
    units: List[Tuple[str, Optional[int]]] = [('conv1', None)]
    for layer, (expand_ratio, _, num_blocks, _) in enumerate(KWMobileNetV2.arch_settings, 1):
        units += [(f'layer{layer}.{block}', 3 if expand_ratio != 1 else 2)
                  for block in range(num_blocks)]
    return units + [('conv2', None)]


_CONV_BN = ('conv', 'bn')  # index inside the release's ConvBNReLU -> mmkw's KWConvModule name


def _rename_mobilenet_v2(key: str, layout: dict) -> Renamed:
    match = re.match(r'features\.(\d+)\.(.+)$', key)
    if match:
        units = layout['units']
        index, rest = int(match[1]), match[2]
        if index >= len(units):
            return None
        module, num_units = units[index]
        if num_units is None:  # stem / last conv: ConvBNReLU
            inner = re.match(r'([01])\.(.+)$', rest)
            return ('backbone', f'{module}.{_CONV_BN[int(inner[1])]}.{inner[2]}', False) \
                if inner else None
        inner = re.match(r'conv\.(\d+)\.(.+)$', rest)
        if not inner:
            return None
        unit, tail = int(inner[1]), inner[2]
        if unit < num_units - 1:  # expansion / depthwise ConvBNReLU
            sub = re.match(r'([01])\.(.+)$', tail)
            return ('backbone', f'{module}.conv.{unit}.{_CONV_BN[int(sub[1])]}.{sub[2]}', False) \
                if sub else None
        if unit == num_units - 1:  # linear 1x1 conv, then its norm as the next entry
            return 'backbone', f'{module}.conv.{unit}.conv.{tail}', False
        if unit == num_units:
            return 'backbone', f'{module}.conv.{num_units - 1}.bn.{tail}', False
        return None
    match = re.match(r'classifier\.(?:1\.)?(weight|bias)$', key)
    if match:
        return 'head', f'fc.{match[1]}', False
    match = re.match(r'classifier\.1\.conv\.(.+)$', key)  # the KW (1/2x) classifier
    if match:
        return 'head', f'fc.{match[1]}', False
    match = re.fullmatch(r'warehouse_manager\.weights\.(\d+)', key)
    if match:
        # the release reserves the KW classifier's warehouse last
        if layout['kw_classifier'] and int(match[1]) == layout['num_warehouses'] - 1:
            return 'head', 'warehouse_manager.weights.0', True
        return 'backbone', key, False
    return None


_CONVNEXT_BLOCK = {'dwconv': 'depthwise_conv', 'pwconv1': 'pointwise_conv1',
                   'pwconv2': 'pointwise_conv2', 'norm': 'norm', 'gamma': 'gamma'}


def _rename_convnext(key: str, layout: dict) -> Renamed:
    if re.match(r'(downsample_layers|warehouse_manager)\.', key):
        return 'backbone', key, False
    match = re.match(r'stages\.(\d+)\.(\d+)\.(dwconv|pwconv1|pwconv2|norm|gamma)(\..+)?$', key)
    if match:
        name = _CONVNEXT_BLOCK[match[3]]
        # the KW release keeps gamma as [1, C, 1, 1]; mmkw (and facebookresearch) as [C]
        return 'backbone', f'stages.{match[1]}.{match[2]}.{name}{match[4] or ""}', \
            match[3] == 'gamma'
    match = re.match(r'norm\.(weight|bias)$', key)  # final norm of the classifier
    if match:
        return 'backbone', f'norm{layout["num_stages"] - 1}.{match[1]}', False
    if re.match(r'norm\d+\.(weight|bias)$', key):  # per-output norms of the detection backbone
        return 'backbone', key, False
    match = re.match(r'head\.(weight|bias)$', key)
    if match:
        return 'head', f'fc.{match[1]}', False
    return None


_RENAMERS: Dict[str, Callable[[str, dict], Renamed]] = {
    'resnet': _rename_resnet, 'mobilenet_v2': _rename_mobilenet_v2, 'convnext': _rename_convnext}


def _layout(backbone: Mapping[str, torch.Tensor], target: Target) -> dict:
    layout: dict = dict(num_warehouses=len(_official_warehouses(backbone)))
    if target.family == 'mobilenet_v2':
        layout['units'] = _mobilenet_units(target.arch)
        layout['kw_classifier'] = any(k.startswith('classifier.1.conv.') for k in backbone)
    elif target.family == 'convnext':
        from mmkw.models import KWConvNeXt
        settings = KWConvNeXt.arch_settings[ARCHS[target.arch][1]['arch']]
        layout['num_stages'] = len(settings['depths'])
    return layout


def rename_official(state_dict: Mapping[str, torch.Tensor], target: Target
                    ) -> Tuple['OrderedDict[str, Tuple[Optional[str], torch.Tensor, bool]]',
                               List[str]]:
    """Rename every official key for ``target``.

    Returns official key -> (mmkw key or None when it has no counterpart, tensor, may_reshape)
    and the dropped official keys (the ImageNet classifier inside a detection backbone).
    """
    detection = target.task == 'detection'
    backbone = _backbone_part(state_dict, target.task)
    rule = _RENAMERS[target.family]
    layout = _layout(backbone, target)
    renamed: 'OrderedDict[str, Tuple[Optional[str], torch.Tensor, bool]]' = OrderedDict()
    dropped: List[str] = []
    for key, tensor in state_dict.items():
        if detection and not key.startswith('backbone.'):
            renamed[key] = (key, tensor, False)  # neck and heads: mmdet 2.x and 3.x names agree
            continue
        inner = key[len('backbone.'):] if detection else key
        result = rule(inner, layout)
        if result is None:
            renamed[key] = (None, tensor, False)
            continue
        part, new_key, may_reshape = result
        if detection and part == 'head':
            dropped.append(key)  # the release's detection backbones keep their ImageNet fc
            continue
        renamed[key] = (f'{part}.{new_key}', tensor, may_reshape)
    return renamed, dropped


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], target: Optional[Target] = None,
                       expected: Optional[Mapping[str, Shape]] = None,
                       unchecked_outside: Optional[str] = None, source: str = 'the checkpoint',
                       model_name: Optional[str] = None
                       ) -> Tuple['OrderedDict[str, torch.Tensor]', List[str]]:
    """Rename an official state dict for ``target`` and check it against ``expected``.

    Args:
        state_dict: the official state dict.
        target: the mmkw model; None keeps the names (a network whose module paths are the
            release's, like the official reference fixtures).
        expected: mmkw key -> shape the result must match exactly; default: the ``target``
            model's (:func:`expected_shapes`). Required when ``target`` is None.
        unchecked_outside: only keys under this prefix are checked (the rest passes as it is);
            None checks every key.
        source: how error messages call the checkpoint.
        model_name: how error messages call the target model (default: from ``target``).

    Returns the converted state dict (in the order of ``expected``, unchecked keys last) and the
    dropped official keys. Raises :class:`ConversionError` naming the first key without a
    counterpart, the first shape that differs (both shapes) or the first missing key.
    """
    if target is None:
        if expected is None:
            raise ValueError('convert_state_dict needs a target or the expected shapes')
        renamed = OrderedDict((k, (k, v, False)) for k, v in state_dict.items())
        dropped: List[str] = []
        what = 'the target model'
    else:
        renamed, dropped = rename_official(state_dict, target)
        expected = expected_shapes(target) if expected is None else expected
        what = f'mmkw\'s {target.describe()}'
    what = model_name or what
    errors: List[str] = []
    converted: Dict[str, torch.Tensor] = {}
    passed: 'OrderedDict[str, torch.Tensor]' = OrderedDict()
    origin: Dict[str, str] = {}
    for key, (new_key, tensor, may_reshape) in renamed.items():
        if new_key is None:
            errors.append(f'official key {key!r} has no counterpart in the model')
            continue
        if new_key in origin:
            errors.append(f'official keys {origin[new_key]!r} and {key!r} both map to {new_key!r}')
            continue
        origin[new_key] = key
        if new_key not in expected:
            if unchecked_outside is not None and not new_key.startswith(unchecked_outside):
                passed[new_key] = tensor
            else:
                errors.append(f'official key {key!r} (mmkw name {new_key!r}) is not in the '
                              'model')
            continue
        want = tuple(expected[new_key])
        if tuple(tensor.shape) != want:
            if may_reshape and tensor.numel() == math.prod(want):
                tensor = tensor.reshape(want)
            else:
                errors.append(f'official key {key!r} (mmkw name {new_key!r}) has shape '
                              f'{list(tensor.shape)} but the model needs {list(want)}')
                continue
        converted[new_key] = tensor
    errors += [f'the model needs {key!r} (shape {list(shape)}), which {source} lacks'
               for key, shape in expected.items() if key not in converted and key not in origin]
    if errors:
        more = f' ({len(errors) - 1} more mismatches)' if len(errors) > 1 else ''
        raise ConversionError(f'{source} does not match {what}: {errors[0]}{more}')
    ordered = OrderedDict((k, converted[k]) for k in expected if k in converted)
    ordered.update(passed)
    return ordered, dropped


# ----------------------------------------------------------------------------- conversion
@dataclass
class ConversionResult:
    """A converted checkpoint: its state dict, the model it is for, and the checkpoint meta."""
    state_dict: 'OrderedDict[str, torch.Tensor]'
    target: Target
    meta: dict
    notes: List[str] = field(default_factory=list)

    def checkpoint(self) -> dict:
        """``{'state_dict': ..., 'meta': ...}`` as mmengine saves it (plain tensors and Python
        values only, so that it loads with ``torch.load(..., weights_only=True)``)."""
        state_dict = OrderedDict((k, v.detach().contiguous()) for k, v in self.state_dict.items())
        return dict(state_dict=state_dict, meta=dict(self.meta))


def convert_official(checkpoint: Union[PathLike, Mapping], arch: Optional[str] = None,
                     budget: Optional[str] = _INFER, task: Optional[str] = None,
                     nonlocal_basis_ratio: Optional[float] = None,
                     config: Optional[Union[PathLike, Any]] = None, key: Optional[str] = None,
                     trust: bool = False) -> ConversionResult:
    """Convert an official checkpoint (a path, a loaded checkpoint dict or a state dict).

    Args:
        checkpoint: the official checkpoint.
        arch: the release's model name (``resnet50``, ``kw_mobilenetv2_050``, ...); inferred
            from the keys when None.
        budget: ``'1/4x'``, ``'1/2x'``, ``'1x'``, ``'2x'``, ``'4x'``, None for a plain network;
            inferred from the warehouse shapes when left at ``'infer'``.
        task: 'classification' or 'detection'; inferred (``backbone.`` keys) when None.
        nonlocal_basis_ratio: inferred (the release's 1/16 when there are ``fc3`` keys).
        config: an mmkw config whose model the result must match in full (all keys, e.g. a Mask
            R-CNN config for a detector checkpoint, whose neck and heads are otherwise passed
            through unchecked).
        key: the entry of the checkpoint that holds the state dict (e.g. ``'model_ema'``).
        trust: unpickle the file fully (see :func:`load_official_checkpoint`).
    """
    source = 'the checkpoint'
    if isinstance(checkpoint, (str, Path)):
        source = Path(checkpoint).name
        state_dict, info = load_official_checkpoint(checkpoint, key, trust)
    else:
        state_dict, info = unwrap_state_dict(checkpoint, key)
    target = infer_target(state_dict, arch, budget, task, nonlocal_basis_ratio)
    if config is not None:
        expected, unchecked = expected_shapes_from_config(config), None
        name = Path(config).name if isinstance(config, (str, Path)) else 'the config'
        model_name = f'the model of {name} (as {target.describe()})'
    else:
        expected = expected_shapes(target)
        unchecked = 'backbone.' if target.task == 'detection' else None
        model_name = None
    converted, dropped = convert_state_dict(state_dict, target, expected, unchecked, source,
                                            model_name)

    notes = [f'{source}: {target.describe()}'
             + (f' (state dict {info["source_key"]!r})' if info['source_key'] else '')]
    if dropped:
        notes.append(f'dropped {len(dropped)} keys of the ImageNet classifier that the release\'s '
                     f'detection backbone carries ({", ".join(dropped)})')
    if target.task == 'detection' and config is None:
        passed = sum(not k.startswith('backbone.') for k in converted)
        notes.append(f'{passed} neck/head keys kept their names unchecked (pass --config to '
                     'check them against an mmdet config)')
    if info['has_ema']:
        notes.append("the checkpoint also holds an EMA of the weights ('model_ema'); pass "
                     "--key model_ema to convert that one")
    meta = dict(
        converted_from='OSVAI/KernelWarehouse',
        converter='mmkw.converters.official',
        source=source,
        source_key=info['source_key'],
        task=target.task,
        arch=target.arch,
        budget='none' if target.budget is None else target.budget,
        nonlocal_basis_ratio=target.nonlocal_basis_ratio,
        num_classes=target.num_classes if target.task == 'classification' else None,
        config=str(config) if isinstance(config, (str, Path)) else target.config,
        dropped_keys=list(dropped),
    )
    from mmkw import __version__
    meta['mmkw_version'] = __version__
    return ConversionResult(converted, target, meta, notes)


def save_checkpoint(result: ConversionResult, path: PathLike) -> Path:
    """Write ``result`` as an mmengine-style checkpoint (``torch.save``), creating folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(result.checkpoint(), path)
    return path
