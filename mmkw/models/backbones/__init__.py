import importlib.util

from .convnext import DynamicConvNeXt, KWConvNeXt, KWConvNeXtBlock
from .kdna_convnext import KDNAConvNeXt
from .kdna_mobilenet_v2 import KDNAMobileNetV2
from .kdna_resnet import KDNAResNet, KDNAResNet_CIFAR
from .mobilenet_v2 import (DynamicMobileNetV2, DyConvMobileNetV2, KWInvertedResidual,
                           KWMobileNetV2, ODConvMobileNetV2)
from .resnet import (DynamicResNet, DynamicResNet_CIFAR, DyConvResNet, KWBasicBlock,
                     KWBottleneck, KWResNet, KWResNet_CIFAR, ODConvResNet)

__all__ = ['DyConvMobileNetV2', 'DyConvResNet', 'DynamicConvNeXt', 'DynamicMobileNetV2',
           'DynamicResNet', 'DynamicResNet_CIFAR', 'KDNAConvNeXt', 'KDNAMobileNetV2',
           'KDNAResNet', 'KDNAResNet_CIFAR', 'KWBasicBlock', 'KWBottleneck', 'KWConvNeXt',
           'KWConvNeXtBlock', 'KWInvertedResidual', 'KWMobileNetV2', 'KWResNet',
           'KWResNet_CIFAR', 'ODConvMobileNetV2', 'ODConvResNet']

# KW DeiT builds on mmpretrain's VisionTransformer; mmpretrain is an optional extra of mmkw
# (pip install mmkw[cls]), so without it this backbone alone is missing.
if importlib.util.find_spec('mmpretrain') is not None:
    from .kw_vit import KWVisionTransformer  # noqa: F401
    __all__.append('KWVisionTransformer')
