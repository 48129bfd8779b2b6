# Baseline ResNet-18, traditional strategy (paper Table 1): mmpretrain's ResNet, no KW.
_base_ = [
    'mmpretrain::_base_/models/resnet18.py',
    '../_base_/recipes/traditional_8xb32_in1k.py',
]
