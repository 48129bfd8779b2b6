# Mask R-CNN + FPN 1x on COCO with a KW (3/4x) ConvNeXt-Tiny backbone in the paper's layout
# (paper Table 3), fine-tuned from an mmpretrain checkpoint of
# configs/kw_convnext/kw0.75x-convnext-tiny_8xb512-adv-300e_in1k.py. The release has no detection
# config for it: it takes the recipe of the release's KW (1x) ConvNeXt-Tiny row
# (mask-rcnn_kw1x-convnext-t_fpn_1x_coco.py), layer-scale weight decay included. The attention
# init strategy is disabled for fine-tuning (A.1.2): attention_init=None holds tau at 0 and no
# KWTemperatureHook runs.
_base_ = './mask-rcnn_kw1x-convnext-t_fpn_1x_coco.py'
model = dict(
    backbone=dict(
        budget='3/4x',
        layout='paper',
        init_cfg=dict(checkpoint='checkpoints/kw0.75x-convnext-tiny_8xb512-adv-300e_in1k.pth')))
