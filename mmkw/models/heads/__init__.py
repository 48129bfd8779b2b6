"""Heads. They build on mmpretrain's ``ClsHead``; mmpretrain is an optional extra of mmkw
(``pip install mmkw[cls]``), so without it ``import mmkw`` still works and only these heads are
missing."""
import importlib.util

__all__ = []
if importlib.util.find_spec('mmpretrain') is not None:
    from .kw_linear_cls_head import KWLinearClsHead  # noqa: F401
    __all__ = ['KWLinearClsHead']
