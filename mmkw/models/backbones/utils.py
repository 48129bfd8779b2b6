"""Helpers shared by the KW backbones: freezing the warehouses of frozen stages, and keeping the
release's attention init when an mmengine ``init_cfg`` matches ``nn.Linear``."""
from typing import Iterable, Optional

import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmkw.ops import KWAttention, KWConv2d, WarehouseManager


def freeze_warehouses_of(modules: Iterable[nn.Module],
                         manager: Optional[WarehouseManager]) -> None:
    """Stop the gradient of every warehouse that a KW conv inside ``modules`` draws from.

    Frozen stages must compute a fixed function, so a warehouse shared with a later, trainable
    stage is frozen too; the trainable convs keep learning their attentions over its cells.
    """
    if manager is None:
        return
    for module in modules:
        for conv in module.modules():
            if isinstance(conv, KWConv2d) and conv.warehouse_manager is manager:
                manager.weights[conv.warehouse_index].requires_grad = False


def reset_kw_attentions(module: nn.Module) -> None:
    """Re-initialise every KW attention of ``module`` as the release does (kaiming fan_out for
    the linear layers, norms 1/0).

    mmengine's weight-init configs select layers by class name: a ``TruncNormal`` or ``Normal``
    init of ``'Linear'`` (ConvNeXt's and many classifiers' defaults) would also hit the
    attentions' ``fc1``/``fc2``, which the release initialises before such a pass can reach them.
    """
    for attention in module.modules():
        if isinstance(attention, KWAttention):
            attention.reset_parameters()


def freeze_stages(modules: Iterable[nn.Module], manager: Optional[WarehouseManager]) -> None:
    """Eval mode and no gradient for ``modules`` and for the warehouses their KW convs use."""
    modules = list(modules)
    for module in modules:
        module.eval()
        for param in module.parameters():
            param.requires_grad = False
    freeze_warehouses_of(modules, manager)


def batch_norms_to_eval(module: nn.Module) -> None:
    """``norm_eval``: keep every BatchNorm (the attentions' BatchNorm1d included) in eval mode."""
    for child in module.modules():
        if isinstance(child, _BatchNorm):
            child.eval()


def kw_conv_cfg(manager: Optional[WarehouseManager], warehouse: str,
                budget=None) -> Optional[dict]:
    """``conv_cfg`` of a KW conv in ``warehouse`` for mmcv's ``build_conv_layer``, or None (a
    normal conv) when the backbone is built without KW (``budget=None``)."""
    if manager is None:
        return None
    return dict(type='KWConv2d', warehouse_manager=manager, warehouse_name=warehouse,
                budget=budget)
