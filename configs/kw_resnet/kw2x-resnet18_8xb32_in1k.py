# KW (2x) ResNet-18, traditional strategy (paper Table 1).
_base_ = ['../_base_/models/kw-resnet18_in1k.py', '../_base_/recipes/traditional_8xb32_in1k.py']
model = dict(backbone=dict(budget='2x'))
custom_hooks = [dict(type='KWTemperatureHook', tau_epochs={{_base_.kw_tau_epochs}})]
