# KW (4x) MobileNetV2 (0.5x), the paper's 150-epoch MobileNetV2 strategy (Table 4): per KW stage
# three warehouses (depthwise, expansion and reduction pointwise convs), as released.
_base_ = [
    '../_base_/models/kw-mobilenet-v2_in1k.py',
    '../_base_/recipes/mobilenet_8xb32-150e_in1k.py',
]
model = dict(backbone=dict(widen_factor=0.5, budget='4x'))
custom_hooks = [dict(type='KWTemperatureHook', tau_epochs={{_base_.kw_tau_epochs}})]
