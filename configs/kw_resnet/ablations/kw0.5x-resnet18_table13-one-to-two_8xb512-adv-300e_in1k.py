# Table 13, KW (1/2x) row '1 kernel cell to 2 linear mixtures' (paper: 7.43M, top-1 72.89):
# pairs of neighbouring mixtures share one cell, no zero cell (Figure 6b).
# One of the paper's ablations (§4.3, A.2), on the advanced recipe: see docs/ablations.md.
_base_ = ['../kw0.5x-resnet18_8xb512-adv-300e_in1k.py']
model = dict(backbone=dict(attention_init='one_to_n'))
