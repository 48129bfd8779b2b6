# Mask R-CNN + FPN 1x on COCO with the KernelDNA MobileNetV2 (1.0x) backbone, fine-tuned from an
# mmpretrain checkpoint of configs/kdna_mobilenet_v2/kdna-mobilenet-v2_8xb32-150e_in1k.py with the
# recipe of the KW and plain rows (configs/_base_/recipes/mask-rcnn_1x_coco_release.py). Outputs
# and frozen part as the plain and KW MobileNetV2 rows.
_base_ = '../_base_/recipes/mask-rcnn_1x_coco_release.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='KDNAMobileNetV2',
        widen_factor=1.0,
        out_indices=(1, 2, 4, 7),
        frozen_stages=2,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=True,
        init_cfg=dict(
            type='Pretrained',
            prefix='backbone.',
            checkpoint='checkpoints/kdna-mobilenet-v2_8xb32-150e_in1k.pth')),
    neck=dict(in_channels=[24, 32, 96, 1280]))
