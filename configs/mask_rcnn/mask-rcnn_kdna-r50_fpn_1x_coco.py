# Mask R-CNN + FPN 1x on COCO with the KernelDNA ResNet-50 backbone, fine-tuned from an mmpretrain
# checkpoint of configs/kdna_resnet/kdna-resnet50_8xb32-300e_in1k.py (or a converted official
# one, tools/model_converters/kdna_official_to_mmkw.py) with the recipe of the KW and plain rows
# (configs/_base_/recipes/mask-rcnn_1x_coco_release.py; the KernelDNA release has no detection
# config). Stem and first stage frozen, BatchNorm statistics kept (the SE gates' included).
_base_ = '../_base_/recipes/mask-rcnn_1x_coco_release.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='KDNAResNet',
        depth=50,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=True,
        init_cfg=dict(
            type='Pretrained',
            prefix='backbone.',
            checkpoint='checkpoints/kdna-resnet50_8xb32-300e_in1k.pth')))
