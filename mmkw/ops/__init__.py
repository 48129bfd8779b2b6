from .budget import Budget
from .kw_conv import KWAttention, KWConv2d, get_temperature, one_to_one_beta, set_temperature
from .warehouse import WarehouseManager

__all__ = ['Budget', 'KWAttention', 'KWConv2d', 'WarehouseManager', 'get_temperature',
           'one_to_one_beta', 'set_temperature']
