# Table 13, KW (4x) row '4 kernel cells to 1 linear mixture' (paper: 45.86M, top-1 76.03):
# each mixture gets beta = 1 on its own 4 cells (Figure 5b).
# One of the paper's ablations (§4.3, A.2), on the advanced recipe: see docs/ablations.md.
_base_ = ['../kw4x-resnet18_8xb512-adv-300e_in1k.py']
model = dict(backbone=dict(attention_init='n_to_one'))
