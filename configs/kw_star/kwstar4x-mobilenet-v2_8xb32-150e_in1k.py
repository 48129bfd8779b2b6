# KW* (4x) MobileNetV2 (1.0x), the 150-epoch MobileNetV2 strategy (KW paper Table 17): KW 4x with
# ODConv-style input-channel, output-channel and kernel-position heads on every KW attention. No
# code was released; this is the reconstruction of mmkw.models.conv_methods.KWStar (12.51M).
_base_ = [
    '../_base_/models/dynamic-mobilenet-v2_in1k.py',
    '../_base_/recipes/mobilenet_8xb32-150e_in1k.py',
]
model = dict(backbone=dict(widen_factor=1.0, conv_cfg=dict(type='KWStar', budget='4x')))
custom_hooks = [dict(type='KWTemperatureHook', tau_epochs={{_base_.kw_tau_epochs}})]
