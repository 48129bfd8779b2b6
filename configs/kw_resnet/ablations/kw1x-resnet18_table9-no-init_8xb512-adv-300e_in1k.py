# Table 9, row without the attentions initialization strategy (paper: 11.93M, top-1 73.39);
# also Table 13, KW (1x) 'without attentions initialization'. The inherited
# KWTemperatureHook finds no init strategy and does nothing (tau stays 0).
# One of the paper's ablations (§4.3, A.2), on the advanced recipe: see docs/ablations.md.
_base_ = ['../kw1x-resnet18_8xb512-adv-300e_in1k.py']
model = dict(backbone=dict(attention_init=None))
