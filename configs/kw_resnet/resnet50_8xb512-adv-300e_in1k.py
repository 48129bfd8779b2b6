# Baseline ResNet-50, advanced strategy (paper Table 2): mmpretrain's ResNet, drop path 0.1 as
# for the KW models of the release.
_base_ = [
    'mmpretrain::_base_/models/resnet50.py',
    '../_base_/recipes/advanced_8xb512_in1k.py',
]
model = dict(
    backbone=dict(drop_path_rate=0.1),
    head=dict(loss={{_base_.label_smooth_loss}}),
    train_cfg={{_base_.batch_mix}})
custom_hooks = []  # no KW layer, no temperature
