# Mask R-CNN + FPN 1x on COCO with a KW (1x) ResNet-50 backbone (paper Table 3), fine-tuned
# from an mmpretrain checkpoint of configs/kw_resnet/kw1x-resnet50_8xb512-adv-300e_in1k.py
# (or a converted official one) with the release's recipe
# (configs/_base_/recipes/mask-rcnn_1x_coco_release.py; release config
# detection/configs/kernelwarehouse/resnet50/mask_rcnn_kw1x_resnet50_adamw_1x_coco.py). The
# attention init strategy is disabled for fine-tuning (A.1.2): attention_init=None holds tau at
# 0 and no KWTemperatureHook runs. As in the release, the
# warehouse the frozen first stage draws from stays trainable (freeze_warehouses=False); see
# docs/detection_recipes.md.
_base_ = '../_base_/recipes/mask-rcnn_1x_coco_release.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='KWResNet',
        depth=50,
        budget='1x',
        attention_init=None,
        drop_path_rate=0.1,  # in every block, the release's detection KW ResNet default
        drop_path_schedule='uniform',
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        freeze_warehouses=False,  # the release keeps the frozen stages' warehouses trainable
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=True,
        init_cfg=dict(
            type='Pretrained',
            prefix='backbone.',
            checkpoint='checkpoints/kw1x-resnet50_8xb512-adv-300e_in1k.pth')))
