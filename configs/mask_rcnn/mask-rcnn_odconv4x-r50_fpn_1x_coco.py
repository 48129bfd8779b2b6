# Mask R-CNN + FPN 1x on COCO with an ODConv (4x) ResNet-50 backbone (KW paper Table 3: box/mask
# AP 42.1/38.6), fine-tuned from an mmpretrain checkpoint of
# configs/odconv/odconv4x-resnet50_8xb512-adv-300e_in1k.py
# (or a checkpoint of the official ODConv release converted by
# tools/model_converters/odconv_official_to_mmkw.py)
# with the release's KW recipe (configs/_base_/recipes/mask-rcnn_1x_coco_release.py), as the
# paper trains every row of Table 3. The temperature stays at its final value T = 1 for
# fine-tuning, so no TemperatureHook runs. Outputs and frozen part as for the KW rows.
_base_ = '../_base_/recipes/mask-rcnn_1x_coco_release.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='DynamicResNet',
        depth=50,
        conv_cfg=dict(type='ODConv', kernel_num=4),
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=True,
        init_cfg=dict(
            type='Pretrained',
            prefix='backbone.',
            checkpoint='checkpoints/odconv4x-resnet50_8xb512-adv-300e_in1k.pth')))
