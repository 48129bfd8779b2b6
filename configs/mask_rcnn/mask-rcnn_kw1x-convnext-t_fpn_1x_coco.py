# Mask R-CNN + FPN 1x on COCO with a KW (1x) ConvNeXt-Tiny backbone (paper Table 3), fine-tuned
# from an mmpretrain checkpoint of configs/kw_convnext/kw1x-convnext-tiny_8xb512-adv-300e_in1k.py
# (or a converted official one) with the release's ConvNeXt recipe (release config
# detection/configs/kernelwarehouse/convnext_tiny/mask_rcnn_kw1x_convnext_tiny_adamw_1x_coco.py,
# which the release's README labels "KW (4x)"). The attention init strategy is disabled for
# fine-tuning (A.1.2): attention_init=None holds tau at 0 and no KWTemperatureHook runs.
# Outputs, drop path and layer scale as for the baseline
# (mask-rcnn_convnext-t_fpn_adamw-1x_coco.py).
# The release's KW ConvNeXt stores layer scales as [1, C, 1, 1], so its 1-D rule decays them;
# KWConvNeXt stores them as [C] (mmpretrain's layout), hence the custom key.
_base_ = './mask-rcnn_convnext-t_fpn_adamw-1x_coco.py'
model = dict(
    backbone=dict(
        budget='1x',
        init_cfg=dict(checkpoint='checkpoints/kw1x-convnext-tiny_8xb512-adv-300e_in1k.pth')))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'.gamma': dict(decay_mult=1.0)}))
