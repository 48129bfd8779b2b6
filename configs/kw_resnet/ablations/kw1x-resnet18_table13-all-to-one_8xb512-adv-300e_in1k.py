# Table 13, KW (1x) row 'all the kernel cells to 1 linear mixture' (paper: 11.93M, top-1
# 73.36): every beta_ij = 1.
# One of the paper's ablations (§4.3, A.2), on the advanced recipe: see docs/ablations.md.
_base_ = ['../kw1x-resnet18_8xb512-adv-300e_in1k.py']
model = dict(backbone=dict(attention_init='all_to_one'))
