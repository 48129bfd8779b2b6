# Table 10, row KW (4x) + Softmax (paper: 45.86M, top-1 74.31).
# One of the paper's ablations (§4.3, A.2), on the advanced recipe: see docs/ablations.md.
_base_ = ['../kw4x-resnet18_8xb512-adv-300e_in1k.py']
model = dict(backbone=dict(attention_function='softmax'))
