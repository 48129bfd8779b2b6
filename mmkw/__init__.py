"""mmkw: dynamic convolutions for OpenMMLab — Kernel Warehouse (Li & Yao, ICML 2024),
KernelDNA, and the KW paper's peers ODConv, DY-Conv and KW*.

Importing the package registers the dynamic conv layers (``KWConv2d``, ``ODConv2d``,
``DyConv2d``, ``KWLinear``, KernelDNA's child conv; mmcv's conv registry), the backbones and
the temperature hooks in mmengine's root registries, which mmdet and mmpretrain inherit, so
``custom_imports=dict(imports=['mmkw'])`` is all a config needs.
"""
from .engine import KWTemperatureHook, TemperatureHook, register_checkpoint_safe_globals
from .models import *  # noqa: F401,F403
from .ops import (Budget, DynamicConv2d, KWConv2d, WarehouseManager, get_temperature,
                  set_temperature)
from .version import __version__

register_checkpoint_safe_globals()

__all__ = ['Budget', 'DynamicConv2d', 'KWConv2d', 'KWTemperatureHook', 'TemperatureHook',
           'WarehouseManager', 'get_temperature', 'set_temperature', '__version__']
