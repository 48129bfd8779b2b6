# DeiT-Small baseline of paper Table 11 (22.06M parameters, 79.78 top-1 in the paper):
# mmpretrain's DeiT config as is (mmpretrain's VisionTransformer), the recipe of the KW rows
# (see deit-tiny_4xb256_in1k.py).
_base_ = ['mmpretrain::deit/deit-small_4xb256_in1k.py']
