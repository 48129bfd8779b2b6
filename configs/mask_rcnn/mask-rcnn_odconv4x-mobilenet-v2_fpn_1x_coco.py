# Mask R-CNN + FPN 1x on COCO with an ODConv (4x) MobileNetV2 (1.0x) backbone (KW paper
# Table 3: box/mask AP 37.2/34.5), fine-tuned from an mmpretrain checkpoint of
# configs/odconv/odconv4x-mobilenet-v2_8xb32-150e_in1k.py
# (or a checkpoint of the official ODConv release converted by
# tools/model_converters/odconv_official_to_mmkw.py)
# with the release's KW recipe (configs/_base_/recipes/mask-rcnn_1x_coco_release.py), as the
# paper trains every row of Table 3. The temperature stays at its final value T = 1 for
# fine-tuning, so no TemperatureHook runs. Outputs and frozen part as for the KW rows.
_base_ = '../_base_/recipes/mask-rcnn_1x_coco_release.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='DynamicMobileNetV2',
        widen_factor=1.0,
        conv_cfg=dict(type='ODConv', kernel_num=4),
        out_indices=(1, 2, 4, 7),
        frozen_stages=2,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=True,
        init_cfg=dict(
            type='Pretrained',
            prefix='backbone.',
            checkpoint='checkpoints/odconv4x-mobilenet-v2_8xb32-150e_in1k.pth')),
    neck=dict(in_channels=[24, 32, 96, 1280]))
