# ImageNet classifier with a MobileNetV2 whose conv method and width the leaf sets
# (backbone.conv_cfg, backbone.widen_factor). Classifier: mmpretrain's LinearClsHead, as the
# KW rows (the ODConv release puts dropout 0.2 before its classifier; LinearClsHead has none).
custom_imports = dict(imports=['mmkw'], allow_failed_imports=False)
model = dict(
    type='ImageClassifier',
    backbone=dict(type='DynamicMobileNetV2', widen_factor=1.0, out_indices=(7, )),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=1280,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        topk=(1, 5)))
