# KW (4x) ResNet-50, advanced strategy (paper Table 2); drop path 0.1 in every block as in the
# release.
_base_ = ['../_base_/models/kw-resnet50_in1k.py', '../_base_/recipes/advanced_8xb512_in1k.py']
model = dict(
    backbone=dict(budget='4x', drop_path_rate=0.1, drop_path_schedule='uniform'),
    head=dict(loss={{_base_.label_smooth_loss}}),
    train_cfg={{_base_.batch_mix}})
custom_hooks = [dict(type='KWTemperatureHook', tau_epochs={{_base_.kw_tau_epochs}})]
