# DY-Conv (4x) ResNet-50, advanced strategy (KW paper Table 2); drop path 0.1 in every
# block as the KW rows.
_base_ = [
    '../_base_/models/dynamic-resnet50_in1k.py',
    '../_base_/recipes/advanced_8xb512_in1k.py',
    '../_base_/hooks/temperature-30to1-10e.py',
]
model = dict(
    backbone=dict(conv_cfg=dict(type='DyConv', kernel_num=4), drop_path_rate=0.1,
                  drop_path_schedule='uniform'),
    head=dict(loss={{_base_.label_smooth_loss}}),
    train_cfg={{_base_.batch_mix}})
