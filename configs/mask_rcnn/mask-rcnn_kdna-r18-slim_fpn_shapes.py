# Demo: the slim Mask R-CNN of mask-rcnn_kw1x-r18-slim_fpn_shapes.py with a KernelDNA ResNet-18
# backbone, initialised from the KernelDNA digits pretraining
# (configs/kdna_resnet/kdna-resnet18_1xb16_digits.py): frozen_stages=1 and norm_eval (the SE
# gates' BatchNorms included), as for KW.
_base_ = './mask-rcnn_kw1x-r18-slim_fpn_shapes.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='KDNAResNet',
        depth=18,
        stem_kernel_size=3,  # the small-input stem of the pretraining, at stride 2 + max-pool
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_eval=True,
        init_cfg=dict(type='Pretrained', prefix='backbone.',
                      checkpoint='work_dirs/kdna-resnet18_1xb16_digits/epoch_4.pth')))
