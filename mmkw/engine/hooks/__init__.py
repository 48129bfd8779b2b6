from .temperature_hook import KWTemperatureHook, TemperatureHook

__all__ = ['KWTemperatureHook', 'TemperatureHook']
