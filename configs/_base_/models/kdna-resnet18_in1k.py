# ImageNet classifier with the KernelDNA ResNet-18 of the official release (docs/kerneldna.md):
# 9,240,798 parameters; the classifier is mmpretrain's LinearClsHead after global pooling, as
# torchvision's fc.
custom_imports = dict(imports=['mmkw'], allow_failed_imports=False)
model = dict(
    type='ImageClassifier',
    backbone=dict(type='KDNAResNet', depth=18, out_indices=(3, )),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=512,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        topk=(1, 5)))
