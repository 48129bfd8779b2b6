# Table 6, row 'within each layer' (paper: 11.81M, top-1 74.34): one warehouse per conv layer,
# shared by the conv's own cells only.
# One of the paper's ablations (§4.3, A.2), on the advanced recipe: see docs/ablations.md.
_base_ = ['../kw1x-resnet18_8xb512-adv-300e_in1k.py']
model = dict(backbone=dict(sharing='layer'))
