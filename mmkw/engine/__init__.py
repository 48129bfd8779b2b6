from .allocator import keep_freed_cpu_memory
from .checkpoint import register_checkpoint_safe_globals
from .hooks import KWTemperatureHook, TemperatureHook
from .launch import setup_distributed, teardown_distributed
from .optimizers import ConvNeXtLayerDecayOptimWrapperConstructor

__all__ = [
    'ConvNeXtLayerDecayOptimWrapperConstructor', 'KWTemperatureHook', 'TemperatureHook',
    'keep_freed_cpu_memory',
    'register_checkpoint_safe_globals', 'setup_distributed', 'teardown_distributed'
]
