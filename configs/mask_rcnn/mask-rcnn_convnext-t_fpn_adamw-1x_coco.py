# Mask R-CNN + FPN 1x on COCO with the baseline ConvNeXt-Tiny backbone (paper Table 3), trained
# with the release's ConvNeXt recipe (configs/_base_/recipes/mask-rcnn_convnext_1x_coco_release.py:
# layer-wise lr decay 0.95, lr steps after epochs 9 and 11; release config
# detection/configs/kernelwarehouse/convnext_tiny/mask_rcnn_convnext_tiny_adamw_1x_coco.py). The
# backbone is KWConvNeXt with budget=None: mmpretrain's ConvNeXt network and parameter names, so
# it loads the checkpoint of configs/kw_convnext/convnext-tiny_8xb512-adv-300e_in1k.py (mmdet
# has no ConvNeXt of its own). As in the release: multi-scale outputs with a LayerNorm each
# (gap_before_final_norm=False), drop path 0.4, layer scale initialised to 1.0 (the checkpoint
# overwrites it), no stage frozen.
_base_ = '../_base_/recipes/mask-rcnn_convnext_1x_coco_release.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='KWConvNeXt',
        arch='tiny',
        budget=None,
        attention_init=None,
        drop_path_rate=0.4,
        layer_scale_init_value=1.0,
        out_indices=(0, 1, 2, 3),
        gap_before_final_norm=False,
        frozen_stages=0,
        init_cfg=dict(
            type='Pretrained',
            prefix='backbone.',
            checkpoint='checkpoints/convnext-tiny_8xb512-adv-300e_in1k.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
