from .base import CONV_METHODS, ConvMethod, ConvMethodLike, ConvSite, build_conv_method
from .kw import KW, KWStar, kw_conv_cfg
from .peers import DyConv, ODConv

__all__ = ['CONV_METHODS', 'ConvMethod', 'ConvMethodLike', 'ConvSite', 'DyConv', 'KW', 'KWStar',
           'ODConv', 'build_conv_method', 'kw_conv_cfg']
