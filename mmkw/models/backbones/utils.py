"""What every dynamic-conv backbone of mmkw does alike: build its conv method, freeze stages
with the parameters they share, ``norm_eval``, and keep the releases' attention init through
mmengine's weight-init configs (the pretrained-weights guard)."""
from typing import Iterable, List, Optional

import torch.nn as nn
from mmengine.model import BaseModule
from torch.nn.modules.batchnorm import _BatchNorm

from mmkw.ops import DynamicAttention, WarehouseManager
from ..conv_methods import ConvMethod, ConvMethodLike, ConvSite, build_conv_method
from ..conv_methods import kw_conv_cfg  # noqa: F401 (re-export for existing imports)


def freeze_warehouses_of(modules: Iterable[nn.Module],
                         manager: Optional[WarehouseManager]) -> None:
    """Stop the gradient of every warehouse that a KW conv inside ``modules`` draws from (see
    :meth:`WarehouseManager.freeze_warehouses_of`)."""
    if manager is not None:
        manager.freeze_warehouses_of(modules)


def reset_dynamic_attentions(module: nn.Module) -> None:
    """Re-initialise every dynamic-conv attention of ``module`` as its release does.

    mmengine's weight-init configs select layers by class name: a ``TruncNormal`` or ``Normal``
    init of ``'Linear'`` (ConvNeXt's and many classifiers' defaults) or a ``Kaiming`` init of
    ``'Conv2d'`` would also hit the attentions' layers, which the releases initialise
    themselves.
    """
    for attention in module.modules():
        if isinstance(attention, DynamicAttention) and hasattr(attention, 'reset_parameters'):
            attention.reset_parameters()


def freeze_stages(modules: Iterable[nn.Module], shared=None) -> None:
    """Eval mode and no gradient for ``modules``, and for the shared parameters their convs
    use: ``shared`` is a :class:`~mmkw.models.conv_methods.ConvMethod`, a
    :class:`~mmkw.ops.WarehouseManager`, or None."""
    modules = list(modules)
    for module in modules:
        module.eval()
        for param in module.parameters():
            param.requires_grad = False
    if isinstance(shared, WarehouseManager):
        shared.freeze_warehouses_of(modules)
    elif shared is not None:
        shared.freeze_shared(modules)


def batch_norms_to_eval(module: nn.Module) -> None:
    """``norm_eval``: keep every BatchNorm (the attentions' norms included) in eval mode."""
    for child in module.modules():
        if isinstance(child, _BatchNorm):
            child.eval()


def is_pretrained(init_cfg) -> bool:
    return isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained'


class DynamicBackbone(BaseModule):
    """Base of the method-agnostic backbones.

    A subclass calls :meth:`setup_method` before building its convs, :meth:`site_cfg` for each
    conv, and :meth:`finish_method` after; it lists its frozen modules in
    :meth:`frozen_modules`. This base then handles freezing (shared parameters included),
    ``norm_eval``, and the init: after mmengine's ``init_cfg`` (unless it loads pretrained
    weights) the attentions get their release init back, and ``zero_init_residual`` zeroes the
    last norm of each residual block.
    """

    norm_eval: bool = False
    zero_init_residual: bool = False

    def setup_method(self, conv_cfg: ConvMethodLike, family: str, **arch) -> ConvMethod:
        self.conv_method = build_conv_method(conv_cfg, type(self).__name__)
        if self.conv_method.is_dynamic:
            self.conv_method.setup(family, type(self).__name__, **arch)
        for name, module in self.conv_method.shared_modules().items():
            self.add_module(name, module)
        self.family = family
        return self.conv_method

    def site_cfg(self, role: str, name: str, stage: int, shape, **kwargs) -> Optional[dict]:
        """The ``conv_cfg`` of mmcv's ``build_conv_layer`` for one conv (see
        :class:`~mmkw.models.conv_methods.ConvSite`)."""
        return self.conv_method.conv_cfg(
            ConvSite(self.family, role, name, stage, tuple(shape), **kwargs))

    def finish_method(self) -> None:
        self.conv_method.finish(self)
        self._freeze_stages()

    def frozen_modules(self) -> List[nn.Module]:
        return []

    def residual_last_norms(self) -> List[nn.Module]:
        """The norms that ``zero_init_residual`` zeroes."""
        return []

    def _freeze_stages(self) -> None:
        # backbones without a conv method (KernelDNA's) share no parameters across stages
        freeze_stages(self.frozen_modules(), getattr(self, 'conv_method', None))

    def init_weights(self) -> None:
        super().init_weights()
        if is_pretrained(self.init_cfg):
            return
        reset_dynamic_attentions(self)
        if self.zero_init_residual:
            for norm in self.residual_last_norms():
                nn.init.zeros_(norm.weight)

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            batch_norms_to_eval(self)
        return self
