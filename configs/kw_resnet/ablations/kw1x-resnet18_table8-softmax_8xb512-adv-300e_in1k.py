# Table 8, row 'Softmax' (paper: 11.93M, top-1 72.67); also Table 10, KW (1x) + Softmax.
# One of the paper's ablations (§4.3, A.2), on the advanced recipe: see docs/ablations.md.
_base_ = ['../kw1x-resnet18_8xb512-adv-300e_in1k.py']
model = dict(backbone=dict(attention_function='softmax'))
