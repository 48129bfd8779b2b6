from .kw_linear_cls_head import KWLinearClsHead

__all__ = ['KWLinearClsHead']
