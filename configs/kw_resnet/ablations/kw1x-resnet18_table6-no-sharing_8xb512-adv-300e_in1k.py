# Table 6, row 'without sharing' (paper: 11.78M, top-1 72.49): no warehouse sharing at all,
# every kernel cell only uses its own warehouse cell (w_i = alpha_i e_i).
# One of the paper's ablations (§4.3, A.2), on the advanced recipe: see docs/ablations.md.
_base_ = ['../kw1x-resnet18_8xb512-adv-300e_in1k.py']
model = dict(backbone=dict(sharing='none'))
