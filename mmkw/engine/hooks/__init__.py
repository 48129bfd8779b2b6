from .temperature_hook import KWTemperatureHook

__all__ = ['KWTemperatureHook']
