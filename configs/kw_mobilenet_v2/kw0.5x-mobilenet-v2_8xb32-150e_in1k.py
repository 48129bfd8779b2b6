# KW (1/2x) MobileNetV2 (1.0x), the paper's 150-epoch MobileNetV2 strategy (Table 4), as
# released: KW stem and depthwise convs (b = 1), KW pointwise convs in the last KW stage only
# (half-size cells, b = 1/2), attention reduction 1/32, and a KW classifier (cells 1000 x 32,
# b = 1/2) owned by the head.
_base_ = [
    '../_base_/models/kw-mobilenet-v2_in1k.py',
    '../_base_/recipes/mobilenet_8xb32-150e_in1k.py',
]
model = dict(
    backbone=dict(widen_factor=1.0, budget='1/2x'),
    head=dict(type='KWLinearClsHead'))
custom_hooks = [dict(type='KWTemperatureHook', tau_epochs={{_base_.kw_tau_epochs}})]
