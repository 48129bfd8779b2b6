"""mmkw: Kernel Warehouse dynamic convolution (Li & Yao, ICML 2024) for OpenMMLab.

Importing the package registers ``KWConv2d`` (mmcv's conv registry), the KW backbones and the
``KWTemperatureHook`` in mmengine's root registries, which mmdet and mmpretrain inherit, so
``custom_imports=dict(imports=['mmkw'])`` is all a config needs.
"""
from .engine import KWTemperatureHook, register_checkpoint_safe_globals
from .models import *  # noqa: F401,F403
from .ops import Budget, KWConv2d, WarehouseManager, set_temperature
from .version import __version__

register_checkpoint_safe_globals()

__all__ = ['Budget', 'KWConv2d', 'KWTemperatureHook', 'WarehouseManager', 'set_temperature',
           '__version__']
