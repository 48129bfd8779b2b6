# DY-Conv (4x) MobileNetV2 (0.5x), the 150-epoch MobileNetV2 strategy (KW paper Table 4).
_base_ = [
    '../_base_/models/dynamic-mobilenet-v2_in1k.py',
    '../_base_/recipes/mobilenet_8xb32-150e_in1k.py',
    '../_base_/hooks/temperature-30to1-10e.py',
]
model = dict(backbone=dict(widen_factor=0.5, conv_cfg=dict(type='DyConv', kernel_num=4)))
