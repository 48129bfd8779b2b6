# Mask R-CNN + FPN 1x on COCO with the baseline ConvNeXt-Tiny backbone (paper Table 3), the
# paper's fine-tuning recipe of mask-rcnn_r50_fpn_adamw-1x_coco.py. The backbone is KWConvNeXt
# with budget=None: mmpretrain's ConvNeXt network and parameter names, so it loads the checkpoint
# of configs/kw_convnext/convnext-tiny_8xb512-adv-300e_in1k.py (mmdet has no ConvNeXt of its own).
# Multi-scale outputs with a LayerNorm each (gap_before_final_norm=False) and drop path 0.4, as
# in mmdet's and the release's ConvNeXt Mask R-CNN configs; no stage is frozen (LayerNorm has no
# statistics to keep). The release's ConvNeXt detection configs also decay the lr layer-wise
# (0.95) and step at epochs 9 and 11; the paper's common recipe is kept here.
_base_ = './mask-rcnn_r50_fpn_adamw-1x_coco.py'
custom_imports = dict(imports=['mmkw'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        _delete_=True,
        type='KWConvNeXt',
        arch='tiny',
        budget=None,
        attention_init=None,
        drop_path_rate=0.4,
        out_indices=(0, 1, 2, 3),
        gap_before_final_norm=False,
        frozen_stages=0,
        init_cfg=dict(
            type='Pretrained',
            prefix='backbone.',
            checkpoint='checkpoints/convnext-tiny_8xb512-adv-300e_in1k.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
