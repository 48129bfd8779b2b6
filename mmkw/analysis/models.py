"""Build the model of an mmpretrain or mmdet config, and describe what it is made of.

:func:`build_model_from_config` is the one place where mmkw's tools and tests turn a config
into a model (``tools/analysis/*``, the converter and detection tests). :func:`parameter_groups`,
:func:`dynamic_conv_rows` and :func:`warehouse_rows` describe a built model for
``tools/analysis/warehouse_table.py`` (the model summary): they are written against the
dynamic-conv contract (:class:`~mmkw.ops.DynamicConv2d`, :class:`~mmkw.ops.DynamicAttention`),
so they cover every method; only the warehouse rows are KW's.
"""
import copy
import os
import os.path as osp
from collections import OrderedDict
from typing import Dict, List, Optional, Union

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import init_default_scope

PathLike = Union[str, 'os.PathLike[str]']
ConfigLike = Union[PathLike, Config]

# default_scope values whose model registry this helper knows
SCOPES = ('mmpretrain', 'mmdet')


def load_config(config: ConfigLike, cfg_options: Optional[dict] = None) -> Config:
    """A config from a path (its ``custom_imports`` imported) or a copy of a ``Config``, with
    ``cfg_options`` merged in as ``tools/train.py --cfg-options`` does (``{'a.b': value}``).

    A given ``Config`` is copied before the options are merged, so the caller's object (e.g.
    a cached one) is never changed.
    """
    if isinstance(config, Config):
        cfg = copy.deepcopy(config) if cfg_options else config
    else:
        path = os.fspath(config)
        if not osp.isfile(path):
            raise FileNotFoundError(f'config {path!r} does not exist')
        cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(_replacing_non_dicts(cfg, cfg_options))
    return cfg


def _replacing_non_dicts(cfg: Config, options: dict) -> dict:
    """``options`` where a dict that overrides a non-dict value (e.g.
    ``model.backbone.conv_cfg=dict(type='ODConv')`` over ``None``) replaces it: mmengine
    merges dicts into dicts only and refuses the rest unless told ``_delete_``."""
    prepared = {}
    for key, value in options.items():
        if isinstance(value, dict):
            first, *rest = key.split('.')
            current = cfg.get(first, {})  # a new key: mmengine adds it
            for part in rest:
                if isinstance(current, dict) and part in current:
                    current = current[part]
                elif isinstance(current, (list, tuple)) and part.isdigit() and \
                        int(part) < len(current):
                    current = current[int(part)]
                else:
                    current = {}
                    break
            if not isinstance(current, dict):
                value = dict(value, _delete_=True)
        prepared[key] = value
    return prepared


def import_custom_modules(cfg: Config) -> None:
    """Import the config's ``custom_imports`` (``Config.fromfile`` does it for files; a
    ``Config`` built from a dict has not)."""
    custom = cfg.get('custom_imports')
    if not custom:
        return
    from mmengine.utils import import_modules_from_strings
    try:
        import_modules_from_strings(**custom)
    except ImportError as error:
        raise ImportError(f"config custom_imports {custom.get('imports')!r} failed: {error}; "
                          'install the package or fix the module name') from error


def _registry(scope: str):
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmpretrain.registry import MODELS
    return MODELS


def model_scope(cfg: Config) -> str:
    """'mmpretrain' or 'mmdet': the config's ``default_scope``, else the library whose registry
    knows ``model.type`` (mmpretrain first, as its tools assume it)."""
    scope = cfg.get('default_scope')
    if scope in SCOPES:
        return scope
    if scope not in (None, 'mmengine'):
        raise ValueError(f'config default_scope {scope!r} is not supported: use one of '
                         f'{SCOPES} (or none, to infer it from model.type)')
    model_type = cfg.model.get('type') if isinstance(cfg.get('model'), dict) else None
    if not isinstance(model_type, str):
        return 'mmpretrain'
    for candidate in SCOPES:
        try:
            found = _registry(candidate).get(model_type)
        except ImportError:
            continue
        if found is not None:
            return candidate
    raise KeyError(f'model type {model_type!r} is registered neither in mmpretrain nor in '
                   "mmdet: set the config's default_scope, or custom_imports for the module "
                   'that registers it')


def build_model_from_config(config: ConfigLike,
                            cfg_options: Optional[dict] = None,
                            checkpoint: Optional[PathLike] = None,
                            *,
                            strict: bool = True,
                            init_weights: bool = False,
                            device: Optional[Union[str, torch.device]] = None) -> nn.Module:
    """Build ``model`` of an mmpretrain or mmdet config, as their Runners would.

    Args:
        config: a config file path or an mmengine ``Config`` (not changed).
        cfg_options: overrides merged into a copy of the config, ``{'model.backbone.x': 1}``
            (``--cfg-options`` of the tools, parsed by mmengine's ``DictAction``).
        checkpoint: a checkpoint file to load (``state_dict`` of an mmengine checkpoint, or a
            bare state dict), through mmengine's ``load_checkpoint``.
        strict: load the checkpoint strictly (every key present, no extra ones).
        init_weights: run ``model.init_weights()`` (its ``init_cfg``, which may load pretrained
            weights) as a Runner does before training. Off by default: tools that load a
            checkpoint or only measure need no download.
        device: move the model there (default: where it was built, the CPU).

    The registry is that of the config's ``default_scope`` ('mmpretrain' or 'mmdet'); without
    one, the library whose registry knows ``model.type``. ``custom_imports`` are imported, and
    mmkw always (it registers the dynamic convs and backbones).

    Returns the model, in training mode as built.
    """
    import mmkw  # noqa: F401  (registers the dynamic-conv modules)
    cfg = load_config(config, cfg_options)
    name = config if not isinstance(config, Config) else (cfg.filename or 'the config')
    if not isinstance(cfg.get('model'), dict):
        raise ValueError(f'{name} has no model dict to build (it is a base or dataset config?)')
    import_custom_modules(cfg)
    scope = model_scope(cfg)
    init_default_scope(scope)
    model = _registry(scope).build(cfg.model)
    if init_weights:
        model.init_weights()
    if checkpoint is not None:
        load_model_checkpoint(model, checkpoint, strict=strict)
    if device is not None:
        model.to(device)
    return model


def load_model_checkpoint(model: nn.Module, checkpoint: PathLike, strict: bool = True) -> dict:
    """Load ``checkpoint`` into ``model`` on the CPU (mmengine's ``load_checkpoint``, torch's
    safe loader with mmkw's allow-list); returns the checkpoint dict."""
    path = os.fspath(checkpoint)
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint {path!r} does not exist')
    from mmengine.runner import load_checkpoint
    return load_checkpoint(model, path, map_location='cpu', strict=strict)


# ----------------------------------------------------------------------- model summary
PARAMETER_GROUPS = OrderedDict([
    ('static_convs', 'static convs'),
    ('dynamic_conv_weights', 'dynamic conv weights'),
    ('attentions', 'attentions'),
    ('shared', 'shared (warehouses)'),
    ('rest', 'rest (norms, linear layers, ...)'),
])


def shared_modules(model: nn.Module) -> List[nn.Module]:
    """Modules whose parameters several dynamic convs share: what each backbone's conv method
    registers on it (``conv_method.shared_modules()``, KW's warehouse manager) and every
    :class:`~mmkw.ops.WarehouseManager` (heads hold their own)."""
    from mmkw.ops import WarehouseManager
    found: Dict[int, nn.Module] = {}
    for module in model.modules():
        method = getattr(module, 'conv_method', None)
        if method is not None and hasattr(method, 'shared_modules'):
            for shared in method.shared_modules().values():
                found[id(shared)] = shared
        if isinstance(module, WarehouseManager):
            found[id(module)] = module
    return list(found.values())


def parameter_groups(model: nn.Module) -> 'OrderedDict[str, dict]':
    """The parameters of ``model`` split by role, each counted once.

    Groups (keys of :data:`PARAMETER_GROUPS`): ``static_convs`` (weights and biases of
    ordinary convs outside attentions, KernelDNA's parents included), ``dynamic_conv_weights``
    (what dynamic convs hold themselves: ODConv's and DY-Conv's K kernels, biases, KernelDNA's
    static modulations), ``attentions`` (every :class:`~mmkw.ops.DynamicAttention`, and
    KernelDNA's input gates), ``shared`` (parameters shared between convs: KW's
    warehouses), ``rest`` (norms, linear layers, anything else).

    Returns ``{group: {'params': count, 'tensors': count, 'modules': count}}`` plus
    ``'total'``.
    """
    from mmkw.ops import DYNAMIC_LAYERS, DynamicAttention, KDNAGate, KDNAStaticTerms
    group_of: Dict[int, str] = {}
    modules_in: Dict[str, int] = {group: 0 for group in PARAMETER_GROUPS}

    def claim(module: nn.Module, group: str) -> None:
        claimed = False
        for param in module.parameters():
            if id(param) not in group_of:
                group_of[id(param)] = group
                claimed = True
        modules_in[group] += claimed

    # the more specific roles first: an attention's convs are not static convs, a dynamic
    # conv's attention is counted as an attention
    for module in model.modules():
        if isinstance(module, (DynamicAttention, KDNAGate)):
            claim(module, 'attentions')
    for module in model.modules():
        if isinstance(module, DYNAMIC_LAYERS + (KDNAStaticTerms, )):
            claim(module, 'dynamic_conv_weights')
    for module in shared_modules(model):
        claim(module, 'shared')
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            claim(module, 'static_convs')
    groups = OrderedDict((group, dict(params=0, tensors=0, modules=modules_in[group]))
                         for group in PARAMETER_GROUPS)
    for param in model.parameters():
        row = groups[group_of.get(id(param), 'rest')]
        row['params'] += param.numel()
        row['tensors'] += 1
    groups['rest']['modules'] = 0  # not meaningful: whatever is left
    groups['total'] = dict(params=sum(row['params'] for row in groups.values()),
                           tensors=sum(row['tensors'] for row in groups.values()), modules=0)
    return groups


def dynamic_conv_rows(model: nn.Module) -> List[dict]:
    """One row per dynamic conv layer type in ``model`` (in order of first appearance):
    ``type``, ``convs``, ``pointwise`` (1x1), ``spatial`` (larger kernels), ``depthwise``,
    ``kernels`` (the distinct K of kernel-mixture methods, empty for others), ``weights`` (the
    parameters the convs hold themselves), ``attentions`` (their attentions' parameters) and
    ``temperatures`` (the distinct current temperatures of their attentions)."""
    from mmkw.ops import DYNAMIC_LAYERS, DynamicAttention
    rows: 'OrderedDict[str, dict]' = OrderedDict()
    seen = set()
    for module in model.modules():
        if not isinstance(module, DYNAMIC_LAYERS) or id(module) in seen:
            continue
        seen.add(id(module))
        name = type(module).__name__
        row = rows.setdefault(name, dict(type=name, convs=0, pointwise=0, spatial=0,
                                         depthwise=0, kernels=set(), weights=0, attentions=0,
                                         temperatures=set()))
        row['convs'] += 1
        # a linear layer over tokens (KWLinear) counts as pointwise
        if tuple(getattr(module, 'kernel_size', (1, 1))) == (1, 1):
            row['pointwise'] += 1
        else:
            row['spatial'] += 1
        groups = getattr(module, 'groups', 1)
        if groups > 1 and groups == module.in_channels == module.out_channels:
            row['depthwise'] += 1
        kernel_num = getattr(module, 'kernel_num', None)
        if isinstance(kernel_num, int):
            row['kernels'].add(kernel_num)
        attention_ids = set()
        for child in module.modules():
            if isinstance(child, DynamicAttention):
                row['temperatures'].add(child.temperature)
                attention_ids |= {id(p) for p in child.parameters()}
                row['attentions'] += sum(p.numel() for p in child.parameters())
        row['weights'] += sum(p.numel() for p in module.parameters()
                              if id(p) not in attention_ids)
    for row in rows.values():
        row['kernels'] = sorted(row['kernels'])
        row['temperatures'] = sorted(row['temperatures'])
    return list(rows.values())


def warehouse_rows(model: nn.Module) -> List[dict]:
    """KW's warehouses: one row per warehouse of every built
    :class:`~mmkw.ops.WarehouseManager` (``owner``: the manager's module path; ``name``,
    ``n`` cells, ``mt`` mixtures, ``cell_shape``, ``b``, ``convs`` sharing it)."""
    from mmkw.ops import WarehouseManager
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, WarehouseManager) and module.built:
            rows += [dict(owner=name, **row) for row in module.summary()]
    return rows


def model_summary(model: nn.Module) -> dict:
    """Everything the model summary prints: parameter counts (total and backbone), the
    parameter groups, the dynamic convs per layer type and KW's warehouses."""
    backbone = getattr(model, 'backbone', None)
    method = getattr(backbone, 'conv_method', None)
    return dict(
        model=type(model).__name__,
        backbone=type(backbone).__name__ if backbone is not None else None,
        conv_method=getattr(method, 'name', None),
        params=sum(p.numel() for p in model.parameters()),
        backbone_params=sum(p.numel() for p in backbone.parameters())
        if backbone is not None else None,
        groups=parameter_groups(model),
        dynamic_convs=dynamic_conv_rows(model),
        warehouses=warehouse_rows(model))
