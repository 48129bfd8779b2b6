from .kw_resnet import KWBasicBlock, KWBottleneck, KWResNet, KWResNet_CIFAR

__all__ = ['KWBasicBlock', 'KWBottleneck', 'KWResNet', 'KWResNet_CIFAR']
