# Baseline ConvNeXt-Tiny on the same recipe (kdna-convnext-tiny_8xb32-150e_in1k.py): mmpretrain's
# plain ConvNeXt-Tiny, drop path 0.1.
_base_ = ['./kdna-convnext-tiny_8xb32-150e_in1k.py']
model = dict(backbone=dict(_delete_=True, type='ConvNeXt', arch='tiny', drop_path_rate=0.1))
