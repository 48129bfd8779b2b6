from .budget import Budget
from .dynamic_conv import (DynamicAttention, DynamicConv2d, get_temperature,
                           set_temperature)
from .dyconv import DyConv2d, DyConvAttention
from .kw_conv import KWAttention, KWConv2d, one_to_one_beta
from .kw_linear import KWLinear
from .kerneldna import (KDNAChildConv2d, KDNAGate, KDNAStage, KDNAStaticTerms,
                        fold_static_kernels, unfold_static_kernels)
from .norm_guard import check_norm_batch
from .odconv import ODConv2d, ODConvAttention
from .per_sample_conv import export_formulation, in_export_formulation
from .warehouse import WarehouseManager

# Every layer with the dynamic-layer interface (``attend``, ``reference_forward``, an
# ``attention`` that is a DynamicAttention): the convs, and KW's linear layer over tokens.
DYNAMIC_LAYERS = (DynamicConv2d, KWLinear)
# Kernel Warehouse's layers, which draw their weights from a WarehouseManager.
KW_LAYERS = (KWConv2d, KWLinear)

__all__ = ['Budget', 'DYNAMIC_LAYERS', 'DyConv2d', 'DyConvAttention', 'DynamicAttention',
           'DynamicConv2d', 'KDNAChildConv2d', 'KDNAGate', 'KDNAStage', 'KDNAStaticTerms',
           'KWAttention', 'KWConv2d', 'KWLinear', 'KW_LAYERS', 'ODConv2d', 'ODConvAttention',
           'WarehouseManager', 'check_norm_batch', 'export_formulation', 'fold_static_kernels',
           'get_temperature', 'in_export_formulation', 'one_to_one_beta', 'set_temperature',
           'unfold_static_kernels']
