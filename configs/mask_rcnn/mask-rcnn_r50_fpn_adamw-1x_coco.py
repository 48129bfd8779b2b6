# Mask R-CNN + FPN 1x on COCO with the baseline ResNet-50 backbone (paper Table 3), trained with
# the release's recipe (configs/_base_/recipes/mask-rcnn_1x_coco_release.py; release config
# detection/configs/kernelwarehouse/resnet50/mask_rcnn_resnet50_adamw_1x_coco.py). The backbone
# is mmdet's ResNet-50 (the release's plain ResNet has the same layers and names) with the
# release's frozen stem and first stage and BatchNorm statistics kept (norm_eval).
_base_ = '../_base_/recipes/mask-rcnn_1x_coco_release.py'
model = dict(
    backbone=dict(
        type='ResNet',
        depth=50,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=True,
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')))
