# DY-Conv (4x) ResNet-18, traditional strategy (KW paper Table 1).
_base_ = [
    '../_base_/models/dynamic-resnet18_in1k.py',
    '../_base_/recipes/traditional_8xb32_in1k.py',
    '../_base_/hooks/temperature-30to1-10e.py',
]
model = dict(backbone=dict(conv_cfg=dict(type='DyConv', kernel_num=4)))
