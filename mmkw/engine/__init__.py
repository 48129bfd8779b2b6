from .checkpoint import register_checkpoint_safe_globals
from .hooks import KWTemperatureHook

__all__ = ['KWTemperatureHook', 'register_checkpoint_safe_globals']
