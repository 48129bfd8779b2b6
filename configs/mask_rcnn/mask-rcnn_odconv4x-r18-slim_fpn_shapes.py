# Demo peer (DEMO_PEERS=1): the slim Mask R-CNN of mask-rcnn_kw1x-r18-slim_fpn_shapes.py with an
# ODConv (4x) ResNet-18 backbone, initialised from the ODConv digits pretraining
# (configs/odconv/odconv4x-resnet18_1xb16_digits.py); temperature 1 (its final value) while
# fine-tuning, as the release's detectors, so no temperature hook.
_base_ = './mask-rcnn_kw1x-r18-slim_fpn_shapes.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='DynamicResNet',
        depth=18,
        conv_cfg=dict(type='ODConv', kernel_num=4),
        stem_kernel_size=3,  # the small-input stem of the pretraining, at stride 2 + max-pool
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_eval=True,
        init_cfg=dict(type='Pretrained', prefix='backbone.',
                      checkpoint='work_dirs/odconv4x-resnet18_1xb16_digits/epoch_6.pth')))
