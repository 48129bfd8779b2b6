# ImageNet classifier with mmkw's KernelDNA ConvNeXt-Tiny (the release has no ConvNeXt code;
# design and 18,343,096 parameters in docs/kerneldna.md). As in ConvNeXt, global pooling and the
# final LayerNorm are in the backbone and the head is a truncated-normal (std 0.02) linear layer.
custom_imports = dict(imports=['mmkw'], allow_failed_imports=False)
model = dict(
    type='ImageClassifier',
    backbone=dict(type='KDNAConvNeXt', arch='tiny', drop_path_rate=0.1),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=768,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=.02, bias=0.)))
