"""Layer-wise learning-rate decay for ConvNeXt detectors, the rule the official KernelWarehouse
release fine-tunes its ConvNeXt-Tiny Mask R-CNN with (paper Table 3; the release's
``detection/mmcv_custom/layer_decay_optimizer_constructor.py`` with ``decay_type='layer_wise'``,
which mmdet 3.x ports as ``LearningRateDecayOptimizerConstructor``).

The layer ids come from parameter names alone, so :class:`~mmkw.models.KWConvNeXt` (KW or
``budget=None``) and mmpretrain's ``ConvNeXt`` get the same ids: both name their modules
``backbone.downsample_layers.{i}`` and ``backbone.stages.{i}.{j}``, and everything else (the
per-output norms ``backbone.norm{i}``, the KW warehouses ``backbone.warehouse_manager.weights.*``,
the neck and the heads) is the top layer at the full learning rate, as in the release.
"""
import re
from typing import Dict, List, Optional, Tuple

import torch.nn as nn
from mmengine.dist import get_dist_info
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

_DOWNSAMPLE = re.compile(r'backbone\.downsample_layers\.(\d+)\.')
_BLOCK = re.compile(r'backbone\.stages\.(\d+)\.(\d+)\.')
_NUM_STAGES = 4
_SETTINGS = ('num_layers', 'decay_rate', 'decay_type', 'custom_keys')


def convnext_layer_id(param_name: str, num_layers: int) -> int:
    """The layer id of a detector (or classifier) parameter under ConvNeXt's layer-wise decay.

    The stem (``downsample_layers.0``) is layer 0 and ``stages.0`` layer 1;
    ``downsample_layers.1`` and ``stages.1`` are layer 2; ``downsample_layers.2`` is layer 3
    and block ``j`` of ``stages.2`` layer ``3 + j // 3``; ``downsample_layers.3`` and
    ``stages.3`` are layer ``num_layers``; every other parameter is layer ``num_layers + 1``.
    This is the release's (and mmdet's) rule.

    Args:
        param_name: full parameter name, e.g. ``'backbone.stages.2.4.depthwise_conv.weight'``.
        num_layers: the ``num_layers`` of the config (6 for ConvNeXt-Tiny).

    Returns:
        The layer id, ``0 .. num_layers + 1``.
    """
    downsample = _DOWNSAMPLE.match(param_name)
    block = _BLOCK.match(param_name)
    stage = int((downsample or block)[1]) if downsample or block else None
    if stage is None:
        return num_layers + 1
    if stage >= _NUM_STAGES:
        raise ValueError(f'parameter {param_name!r} lies in stage {stage}, but the layer-wise '
                         f'decay rule knows the {_NUM_STAGES} stages of ConvNeXt')
    if downsample:
        return (0, 2, 3, num_layers)[stage]
    if stage == 2:
        layer_id = 3 + int(block[2]) // 3
        if layer_id >= num_layers:
            raise ValueError(f'num_layers={num_layers} is too small for {param_name!r}: its '
                             f'layer id {layer_id} reaches the last stage; set num_layers above '
                             '3 + (blocks of the third stage - 1) // 3 (6 for ConvNeXt-Tiny)')
        return layer_id
    return (1, 2, None, num_layers)[stage]


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class ConvNeXtLayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Optimizer wrapper constructor with ConvNeXt's layer-wise learning-rate decay.

    A parameter of layer ``l`` (:func:`convnext_layer_id`) trains at
    ``lr * decay_rate ** (num_layers + 1 - l)``. Weight decay follows the release: none for
    1-D parameters (norms, layer scales, biases) and parameters named ``*.bias``, the
    optimizer's ``weight_decay`` for the rest. Frozen parameters (``requires_grad=False``) are
    left out of the optimizer, as the release leaves them.

    ``paramwise_cfg`` keys:

    - ``num_layers`` (int): the top layer id of stage 4 (6 for ConvNeXt-Tiny and its 9-block
      third stage, 12 for the 27-block variants).
    - ``decay_rate`` (float): the per-layer factor (0.95 in the release).
    - ``decay_type`` (str): ``'layer_wise'``, the only rule the release's configs use.
    - ``custom_keys`` (dict): as in mmengine, ``{substring: dict(lr_mult=..., decay_mult=...)}``
      for parameters whose full name contains the substring (longest key first); a match
      replaces the shape rule's weight decay by ``weight_decay * decay_mult`` and multiplies the
      layer's lr by ``lr_mult`` (both default 1). The KW ConvNeXt configs use it for the layer
      scales, which the release's KW ConvNeXt stores as ``[1, C, 1, 1]`` and so decays.
    """

    def add_params(self, params: List[dict], module: nn.Module, **kwargs) -> None:
        """Append one parameter group per (layer, weight decay, lr multiplier) to ``params``.

        Args:
            params: the param-group list being built; extended in place.
            module: the whole model (a detector or classifier with a ConvNeXt ``backbone``).
        """
        num_layers, decay_rate, custom_keys = self._settings()
        named = [(name, param) for name, param in module.named_parameters()
                 if param.requires_grad]
        if not any(_BLOCK.match(name) for name, _ in named):
            raise ValueError(
                f'{type(self).__name__} assigns layer ids by ConvNeXt parameter names '
                "('backbone.downsample_layers.*', 'backbone.stages.*'), but the model has no "
                "trainable 'backbone.stages.*' parameter: use it with KWConvNeXt or "
                "mmpretrain's ConvNeXt as the backbone")
        sorted_keys = sorted(sorted(custom_keys), key=len, reverse=True)
        groups: Dict[Tuple[int, float, float], dict] = {}
        for name, param in named:
            layer_id = convnext_layer_id(name, num_layers)
            weight_decay = 0. if param.ndim == 1 or name.endswith('.bias') else self.base_wd
            lr_mult = 1.
            key = next((k for k in sorted_keys if k in name), None)
            if key is not None:
                lr_mult = custom_keys[key].get('lr_mult', 1.)
                weight_decay = self.base_wd * custom_keys[key].get('decay_mult', 1.)
            group = groups.get((layer_id, weight_decay, lr_mult))
            if group is None:
                scale = decay_rate**(num_layers + 1 - layer_id)
                group = groups[layer_id, weight_decay, lr_mult] = dict(
                    params=[], lr=self.base_lr * scale * lr_mult, weight_decay=weight_decay,
                    lr_scale=scale * lr_mult)
            group['params'].append(param)
        params.extend(groups.values())
        if get_dist_info()[0] == 0:
            lines = [f'layer {layer_id}: lr x{g["lr_scale"]:.4f}, weight decay '
                     f'{weight_decay:g}, {len(g["params"])} tensors'
                     for (layer_id, weight_decay, _), g in sorted(groups.items())]
            print_log('ConvNeXt layer-wise lr decay groups:\n  ' + '\n  '.join(lines),
                      logger='current')

    def _settings(self) -> Tuple[int, float, dict]:
        cfg = self.paramwise_cfg
        unknown = sorted(set(cfg) - set(_SETTINGS))
        if unknown:
            raise ValueError(f'{type(self).__name__}: unknown paramwise_cfg keys {unknown}; '
                             f'it takes {list(_SETTINGS)}')
        decay_type = cfg.get('decay_type', 'layer_wise')
        if decay_type != 'layer_wise':
            raise ValueError(f"{type(self).__name__} implements decay_type='layer_wise' (the "
                             f'release\'s ConvNeXt rule), got {decay_type!r}')
        num_layers: Optional[int] = cfg.get('num_layers')
        decay_rate: Optional[float] = cfg.get('decay_rate')
        if not isinstance(num_layers, int) or num_layers < 4:
            raise ValueError('paramwise_cfg.num_layers must be an int >= 4 (6 for '
                             f'ConvNeXt-Tiny), got {num_layers!r}')
        if not isinstance(decay_rate, (int, float)) or not 0 < decay_rate <= 1:
            raise ValueError('paramwise_cfg.decay_rate must be a number in (0, 1] (0.95 in the '
                             f'release), got {decay_rate!r}')
        if self.base_lr is None or self.base_wd is None:
            raise ValueError(f'{type(self).__name__} needs optimizer.lr and '
                             'optimizer.weight_decay in the config')
        return num_layers, float(decay_rate), dict(cfg.get('custom_keys', {}))
