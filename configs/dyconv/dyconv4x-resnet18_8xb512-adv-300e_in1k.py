# DY-Conv (4x) ResNet-18, advanced strategy (KW paper Table 2).
_base_ = [
    '../_base_/models/dynamic-resnet18_in1k.py',
    '../_base_/recipes/advanced_8xb512_in1k.py',
    '../_base_/hooks/temperature-30to1-10e.py',
]
model = dict(
    backbone=dict(conv_cfg=dict(type='DyConv', kernel_num=4)),
    head=dict(loss={{_base_.label_smooth_loss}}),
    train_cfg={{_base_.batch_mix}})
