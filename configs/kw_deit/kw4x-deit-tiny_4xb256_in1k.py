# DeiT-Tiny + KW (4x), paper Table 11: 20.44M parameters (20,438,752 with the 1000-class head),
# 76.51 top-1 in the paper. Value and output projections of each 3 blocks share one warehouse,
# fc1 and fc2 of each 2 blocks one, b = 4 with whole gcd cells, attention reduction 1/8
# (docs/kw_vit.md; no layout with reduction 1/16 and gcd cells gives 20.44M). mmpretrain's
# DeiT recipe, as the baseline deit-tiny_4xb256_in1k.py, plus tau over the first 20 epochs.
_base_ = ['mmpretrain::deit/deit-tiny_4xb256_in1k.py']
custom_imports = dict(imports=['mmkw'], allow_failed_imports=False)
model = dict(backbone=dict(type='KWVisionTransformer', budget='4x'))
custom_hooks = [dict(type='KWTemperatureHook', tau_epochs=20)]
