# Table 5, row 'without kernel partition' (paper: 11.78M, top-1 70.49): every cell is a whole
# kernel, shared among the same-shaped kernels of each stage (sharing_dims='exact'), i.e.
# DY-Conv-style mixing of whole kernels from a shared warehouse (§3.5).
# One of the paper's ablations (§4.3, A.2), on the advanced recipe: see docs/ablations.md.
_base_ = ['../kw1x-resnet18_8xb512-adv-300e_in1k.py']
model = dict(backbone=dict(kernel_partition=False, sharing_dims='exact'))
