# KW (1x) MobileNetV2 (1.0x), the paper's 150-epoch MobileNetV2 strategy (Table 4): per KW stage
# one warehouse for the pointwise and one for the depthwise convs, as released.
_base_ = [
    '../_base_/models/kw-mobilenet-v2_in1k.py',
    '../_base_/recipes/mobilenet_8xb32-150e_in1k.py',
]
model = dict(backbone=dict(widen_factor=1.0, budget='1x'))
custom_hooks = [dict(type='KWTemperatureHook', tau_epochs={{_base_.kw_tau_epochs}})]
