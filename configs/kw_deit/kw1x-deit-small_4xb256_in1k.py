# DeiT-Small + KW (1x), paper Table 11: 24.36M parameters (24,356,080 with the 1000-class
# head), 80.63 top-1 in the paper. Value, output projection, fc1 and fc2 of each 3 blocks share
# one warehouse (4 warehouses), attention reduction 1/16 (docs/kw_vit.md). mmpretrain's DeiT
# recipe, as the baseline deit-small_4xb256_in1k.py, plus tau over the first 20 epochs.
_base_ = ['mmpretrain::deit/deit-small_4xb256_in1k.py']
custom_imports = dict(imports=['mmkw'], allow_failed_imports=False)
model = dict(backbone=dict(type='KWVisionTransformer', budget='1x'))
custom_hooks = [dict(type='KWTemperatureHook', tau_epochs=20)]
