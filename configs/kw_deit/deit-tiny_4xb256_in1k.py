# DeiT-Tiny baseline of paper Table 11 (5.72M parameters, 72.13 top-1 in the paper):
# mmpretrain's DeiT config as is (mmpretrain's VisionTransformer), the recipe of the KW rows:
# 300 epochs, AdamW (lr 1e-3 at batch 1024, weight decay 0.05, none on norms, biases and other
# 1-D parameters), 20 linear warm-up epochs then cosine, RandAugment rand-m9-mstd0.5-inc1,
# random erasing 0.25, mixup 0.8, cutmix 1.0, label smoothing 0.1, gradient clipping 5.
_base_ = ['mmpretrain::deit/deit-tiny_4xb256_in1k.py']
