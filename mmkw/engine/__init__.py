from .allocator import keep_freed_cpu_memory
from .checkpoint import register_checkpoint_safe_globals
from .hooks import KWTemperatureHook
from .launch import setup_distributed, teardown_distributed

__all__ = [
    'KWTemperatureHook', 'keep_freed_cpu_memory', 'register_checkpoint_safe_globals',
    'setup_distributed', 'teardown_distributed'
]
