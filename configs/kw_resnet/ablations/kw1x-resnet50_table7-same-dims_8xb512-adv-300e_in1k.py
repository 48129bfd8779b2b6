# Table 7, row 'same dimensioned kernels' (paper: 26.95M, top-1 79.80): per stage one warehouse
# per conv position of the bottleneck (1x1 reduce, 3x3, 1x1 expand), as the release's
# sharing_range=('layer',).
# One of the paper's ablations (§4.3, A.2), on the advanced recipe: see docs/ablations.md.
_base_ = ['../kw1x-resnet50_8xb512-adv-300e_in1k.py']
model = dict(backbone=dict(sharing_dims='same'))
