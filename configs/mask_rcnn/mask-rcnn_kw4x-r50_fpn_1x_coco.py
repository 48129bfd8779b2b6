# Mask R-CNN + FPN 1x on COCO with a KW (4x) ResNet-50 backbone (paper Table 3), fine-tuned
# from an mmpretrain checkpoint of configs/kw_resnet/kw4x-resnet50_8xb512-adv-300e_in1k.py
# (or a converted official one). The attention init strategy is disabled for fine-tuning
# (A.1.2): attention_init=None holds tau at 0 and no KWTemperatureHook runs.
_base_ = './mask-rcnn_r50_fpn_adamw-1x_coco.py'
custom_imports = dict(imports=['mmkw'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        _delete_=True,
        type='KWResNet',
        depth=50,
        budget='4x',
        attention_init=None,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=True,
        init_cfg=dict(
            type='Pretrained',
            prefix='backbone.',
            checkpoint='checkpoints/kw4x-resnet50_8xb512-adv-300e_in1k.pth')))
