# ImageNet classifier with a KW ConvNeXt-Tiny backbone (paper Table 2; budget and drop path set
# by the leaf). As in ConvNeXt, global pooling and the final LayerNorm are in the backbone
# (gap_before_final_norm) and the head is a truncated-normal (std 0.02) linear layer. The init
# is on the head, not the whole model: KW convs keep the release's kaiming cells and attentions.
custom_imports = dict(imports=['mmkw'], allow_failed_imports=False)
model = dict(
    type='ImageClassifier',
    backbone=dict(type='KWConvNeXt', arch='tiny', budget='1x', drop_path_rate=0.3),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=768,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=.02, bias=0.)))
