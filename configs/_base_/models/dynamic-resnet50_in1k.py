# ImageNet classifier with a ResNet-50 whose conv method the leaf sets (backbone.conv_cfg:
# dict(type='KW' | 'ODConv' | 'DyConv' | 'KWStar', ...); unset, it is the plain network).
custom_imports = dict(imports=['mmkw'], allow_failed_imports=False)
model = dict(
    type='ImageClassifier',
    backbone=dict(type='DynamicResNet', depth=50, out_indices=(3, )),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=2048,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        topk=(1, 5)))
