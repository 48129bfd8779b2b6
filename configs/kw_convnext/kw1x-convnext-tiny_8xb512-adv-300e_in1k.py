# KW (1x) ConvNeXt-Tiny, advanced strategy (paper Table 2), as released: 12 warehouses (stem,
# three downsampling convs, and per stage the depthwise and the pointwise convs), LayerNorm in
# the attentions, 39.37M parameters; drop path 0.3 and a model EMA as in the release.
_base_ = ['../_base_/models/kw-convnext-tiny_in1k.py', '../_base_/recipes/advanced_8xb512_in1k.py']
model = dict(
    backbone=dict(budget='1x', drop_path_rate=0.3),
    head=dict(loss={{_base_.label_smooth_loss}}),
    train_cfg={{_base_.batch_mix}})
custom_hooks = [
    dict(type='KWTemperatureHook', tau_epochs={{_base_.kw_tau_epochs}}),
    dict(type='EMAHook', momentum=1e-4, priority='ABOVE_NORMAL'),
]
