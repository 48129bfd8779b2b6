from .kw_convnext import KWConvNeXt, KWConvNeXtBlock
from .kw_mobilenet_v2 import KWInvertedResidual, KWMobileNetV2
from .kw_resnet import KWBasicBlock, KWBottleneck, KWResNet, KWResNet_CIFAR

__all__ = ['KWBasicBlock', 'KWBottleneck', 'KWConvNeXt', 'KWConvNeXtBlock', 'KWInvertedResidual',
           'KWMobileNetV2', 'KWResNet', 'KWResNet_CIFAR']
