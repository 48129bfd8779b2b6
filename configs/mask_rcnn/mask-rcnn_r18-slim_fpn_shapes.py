# Demo baseline: the same slim Mask R-CNN and ResNet-18 structure with normal convs
# (budget=None), initialised from the plain digits pretraining
# (configs/kw_resnet/resnet18_1xb16_digits.py).
_base_ = './mask-rcnn_kw1x-r18-slim_fpn_shapes.py'
model = dict(
    backbone=dict(
        budget=None,
        init_cfg=dict(checkpoint='work_dirs/resnet18_1xb16_digits/epoch_6.pth')))
