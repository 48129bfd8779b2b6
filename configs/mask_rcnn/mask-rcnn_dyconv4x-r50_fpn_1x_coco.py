# Mask R-CNN + FPN 1x on COCO with a DY-Conv (4x) ResNet-50 backbone (KW paper Table 3: box/mask
# AP 39.6/36.6), fine-tuned from an mmpretrain checkpoint of
# configs/dyconv/dyconv4x-resnet50_8xb512-adv-300e_in1k.py
# with the release's KW recipe (configs/_base_/recipes/mask-rcnn_1x_coco_release.py), as the
# paper trains every row of Table 3. The temperature stays at its final value T = 1 for
# fine-tuning, so no TemperatureHook runs. Outputs and frozen part as for the KW rows.
_base_ = '../_base_/recipes/mask-rcnn_1x_coco_release.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='DynamicResNet',
        depth=50,
        conv_cfg=dict(type='DyConv', kernel_num=4),
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=True,
        init_cfg=dict(
            type='Pretrained',
            prefix='backbone.',
            checkpoint='checkpoints/dyconv4x-resnet50_8xb512-adv-300e_in1k.pth')))
