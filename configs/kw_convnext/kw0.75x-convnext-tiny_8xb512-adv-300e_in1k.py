# KW (3/4x) ConvNeXt-Tiny, advanced strategy (paper Table 2), in the paper's layout (the third
# stage split into three warehouse groups, Table 14; attention reduction 1/32): half-size cells
# and b = 1/2 for the pointwise convs of the last two groups, KW (1x) elsewhere; 24.53M
# parameters as in the paper. The release has no such model: drop path 0.1 is the baseline's
# (the model is slightly smaller than the baseline), the EMA as for KW (1x).
_base_ = ['../_base_/models/kw-convnext-tiny_in1k.py', '../_base_/recipes/advanced_8xb512_in1k.py']
model = dict(
    backbone=dict(budget='3/4x', layout='paper', drop_path_rate=0.1),
    head=dict(loss={{_base_.label_smooth_loss}}),
    train_cfg={{_base_.batch_mix}})
custom_hooks = [
    dict(type='KWTemperatureHook', tau_epochs={{_base_.kw_tau_epochs}}),
    dict(type='EMAHook', momentum=1e-4, priority='ABOVE_NORMAL'),
]
