# ImageNet classifier with a KW MobileNetV2 backbone (paper Table 4; width and budget set by the
# leaf). The classifier is mmpretrain's LinearClsHead (normal init, std 0.01, as the release's);
# the KW (1/2x) leaves replace it with the KW classifier of the release (KWLinearClsHead).
custom_imports = dict(imports=['mmkw'], allow_failed_imports=False)
model = dict(
    type='ImageClassifier',
    backbone=dict(type='KWMobileNetV2', widen_factor=1.0, budget='1x', out_indices=(7, )),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=1280,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        topk=(1, 5)))
