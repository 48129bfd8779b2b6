# The official release's Mask R-CNN 1x recipe for ConvNeXt-Tiny (paper Table 3; OSVAI/
# KernelWarehouse, detection/configs/kernelwarehouse/convnext_tiny/mask_rcnn_*_adamw_1x_coco.py):
# mask-rcnn_1x_coco_release.py with layer-wise lr decay and later lr steps.
#
# - Layer-wise lr decay 0.95 over num_layers=6 (the release's LearningRateDecayOptimizerConstructor,
#   decay_type='layer_wise'): the stem trains at lr x0.95^7, stage 4 at x0.95, the per-output
#   norms, the KW warehouses, the neck and the heads at the full lr
#   (mmkw.engine.optimizers.convnext_layer_id). Weight decay 0.05 except for 1-D parameters and
#   biases; this replaces the base's 'norm' key, as in the release.
# - lr x0.1 after epochs 9 and 11 of 12.
_base_ = './mask-rcnn_1x_coco_release.py'
optim_wrapper = dict(
    constructor='ConvNeXtLayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(_delete_=True, num_layers=6, decay_rate=0.95, decay_type='layer_wise'))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[9, 11], gamma=0.1),
]
