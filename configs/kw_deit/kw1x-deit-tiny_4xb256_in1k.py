# DeiT-Tiny + KW (1x), paper Table 11: 6.39M parameters (6,387,424 with the 1000-class head),
# 73.56 top-1 in the paper. Value and output projections of all 12 blocks share one warehouse,
# fc1 and fc2 of each 4 blocks one, attention reduction 1/16 (docs/kw_vit.md: the layout was
# found from the parameter counts; the paper gives none). mmpretrain's DeiT recipe, as the
# baseline deit-tiny_4xb256_in1k.py, plus tau from 1 to 0 over the first 20 epochs (the
# paper's advanced recipe). The model-level TruncNormal init of mmpretrain's DeiT config
# reaches the static linear layers; KW cells and attentions keep KW's init.
_base_ = ['mmpretrain::deit/deit-tiny_4xb256_in1k.py']
custom_imports = dict(imports=['mmkw'], allow_failed_imports=False)
model = dict(backbone=dict(type='KWVisionTransformer', budget='1x'))
custom_hooks = [dict(type='KWTemperatureHook', tau_epochs=20)]
