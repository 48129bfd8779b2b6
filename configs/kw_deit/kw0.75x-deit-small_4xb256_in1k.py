# DeiT-Small + KW (3/4x), paper Table 11: 19.23M parameters (19,226,908 with the 1000-class
# head), 79.94 top-1 in the paper. Value, output projection, fc1 and fc2 of each 3 blocks share
# one warehouse; the last two warehouses are KW (1/2x) (half-gcd cells, b = 1/2), the first
# two KW (1x), as the paper's KW (3/4x) ConvNeXt halves its last two groups; attention
# reduction 1/32 (docs/kw_vit.md). mmpretrain's DeiT recipe, as the baseline
# deit-small_4xb256_in1k.py, plus tau over the first 20 epochs.
_base_ = ['mmpretrain::deit/deit-small_4xb256_in1k.py']
custom_imports = dict(imports=['mmkw'], allow_failed_imports=False)
model = dict(backbone=dict(type='KWVisionTransformer', budget='3/4x'))
custom_hooks = [dict(type='KWTemperatureHook', tau_epochs=20)]
