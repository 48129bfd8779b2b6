"""The peer methods of the KW paper as conv methods: ODConv and DY-Conv.

Layer choices (``../shared/notes/peers_format.md`` §2-3, measured from the official ODConv
code and the DY-Conv reconstruction that gives the KW paper's counts):

- **ODConv**: ResNet: every block conv; the stem and the 1x1 shortcut convs stay static.
  MobileNetV2: every expansion, depthwise and projection conv and the last 1x1 conv; the stem
  stays static.
- **DY-Conv**: every conv but the stem, shortcut convs and MobileNetV2's last conv included.

Classifiers stay static in both. ConvNeXt has no released layer choice for either.
"""
from typing import Optional, Union

from .base import CONV_METHODS, ConvMethod, ConvSite


class _KernelMixture(ConvMethod):
    families = ('resnet', 'mobilenet_v2')
    layer_type = ''

    def __init__(self, kernel_num: int = 4, reduction: Optional[float] = None,
                 attention_function: str = 'softmax',
                 recompute_kernels: Union[bool, str] = 'auto') -> None:
        if not (isinstance(kernel_num, int) and kernel_num >= 1):
            raise ValueError(f'{self.name}: kernel_num must be a positive int, got '
                             f'{kernel_num!r}')
        self.kernel_num = kernel_num
        self.reduction = reduction
        self.attention_function = attention_function
        self.recompute_kernels = recompute_kernels

    def is_dynamic_site(self, site: ConvSite) -> bool:
        return site.role != 'stem'

    def conv_cfg(self, site: ConvSite) -> Optional[dict]:
        if not self.is_dynamic_site(site):
            return None
        cfg = dict(type=self.layer_type, kernel_num=self.kernel_num,
                   attention_function=self.attention_function,
                   recompute_kernels=self.recompute_kernels)
        if self.reduction is not None:
            cfg['reduction'] = self.reduction
        return cfg


@CONV_METHODS.register_module()
class ODConv(_KernelMixture):
    """Omni-dimensional dynamic convolution (Li, Zhou and Yao, ICLR 2022):
    ``conv_cfg=dict(type='ODConv', kernel_num=4)``.

    Args:
        kernel_num: K, the kernels mixed per conv (1 and 4 in the KW paper's tables).
        reduction: attention hidden width ratio (default of the layer: 1/16, at least 16).
        attention_function: 'softmax' over the K kernels (the release's) or 'caf' (KW's
            contrasting-driven function, Table 10).
        recompute_kernels: True, False or 'auto' (see :class:`~mmkw.ops.DynamicConv2d`).
    """
    name = 'ODConv'
    layer_type = 'ODConv2d'

    def is_dynamic_site(self, site: ConvSite) -> bool:
        return site.role not in ('stem', 'downsample')


@CONV_METHODS.register_module()
class DyConv(_KernelMixture):
    """Dynamic convolution (Chen et al., CVPR 2020), as reconstructed in the notes:
    ``conv_cfg=dict(type='DyConv', kernel_num=4)``. Same arguments as :class:`ODConv`
    (reduction default of the layer: 1/4)."""
    name = 'DyConv'
    layer_type = 'DyConv2d'
