# ImageNet classifier with the KernelDNA MobileNetV2 of the official release (widen factor set by
# the leaf; docs/kerneldna.md): 3,136,840 parameters at 1.0x, 1,878,232 at 0.5x. No dropout
# before the classifier, as the release (torchvision's model built with dropout=0).
custom_imports = dict(imports=['mmkw'], allow_failed_imports=False)
model = dict(
    type='ImageClassifier',
    backbone=dict(type='KDNAMobileNetV2', widen_factor=1.0, out_indices=(7, )),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=1280,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        topk=(1, 5)))
