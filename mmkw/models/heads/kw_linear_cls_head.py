"""A classifier whose fully connected layer is a Kernel Warehouse layer (paper A.3, the release's
KW 1/2x MobileNetV2).

To bring MobileNetV2 below its baseline size the release also draws the classifier weights from
a warehouse: the 1280 -> 1000 layer is cut into cells of 1000 x 32 (``cell_inplane_ratio =
0.025`` of the 1280 input channels), and the warehouse holds half as many cells as the layer
has mixtures (b = 1/2, n = 20 for m = 40). Its attention uses the same reduction (1/32) as the
backbone's. The warehouse is used by the classifier alone, so the head owns its own
:class:`~mmkw.ops.WarehouseManager`; the backbone stays a plain feature extractor and the usual
``ImageClassifier`` (backbone -> ``GlobalAveragePooling`` -> head) works unchanged.
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
from mmengine.registry import MODELS
from mmpretrain.models.heads import ClsHead

from mmkw.ops import KWConv2d, WarehouseManager
from ..backbones.utils import reset_dynamic_attentions


@MODELS.register_module()
class KWLinearClsHead(ClsHead):
    """Linear classification head built on a 1x1 :class:`~mmkw.ops.KWConv2d` over the pooled
    feature, as mmpretrain's ``LinearClsHead`` otherwise.

    Args:
        num_classes: number of categories.
        in_channels: channels of the pooled input feature.
        budget: warehouse budget of the classifier; the default is the release's (b = 1/2,
            cells of the full output width and 0.025 of the input width: 1000 x 32 for
            MobileNetV2).
        reduction: attention hidden width ratio (the release's KW 1/2x MobileNetV2: 1/32).
        attention_norm: 'BN' (the release) or 'LN'.
        attention_init: 'one_to_one' (A.2; tau schedules apply) or None (tau held at 0);
            Table 13's 'all_to_one', 'n_to_one', 'one_to_n' also work.
        attention_function: 'caf' (Eq. 4) or Table 8's 'softmax', 'sigmoid', 'relu_norm'.
        recompute_kernels: assemble large per-sample kernels again in the backward pass
            instead of keeping them (True, False or 'auto'; see
            :class:`~mmkw.ops.WarehouseManager`): far less training memory for one more
            assembly per conv.
        dropout: dropout before the classifier (the release trains with 0).
        bias: learnable bias of the classifier (the release: True).
        **kwargs: ``loss``, ``topk``, ``cal_acc``, ``init_cfg`` of mmpretrain's ``ClsHead``.

    The parameters are ``warehouse_manager.weights.0`` (``[n, num_classes, cell_in, 1, 1]``),
    ``fc.bias`` and ``fc.attention.*``.
    """

    def __init__(self,
                 num_classes: int,
                 in_channels: int,
                 budget=dict(cell_num_ratio=0.5, cell_inplane_ratio=0.025,
                             cell_outplane_ratio=1.0),
                 reduction: float = 1 / 32,
                 attention_norm: str = 'BN',
                 attention_init: Optional[str] = 'one_to_one',
                 attention_function: str = 'caf',
                 recompute_kernels: Union[bool, str] = 'auto',
                 dropout: float = 0.0,
                 bias: bool = True,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes <= 0:
            raise ValueError(f'num_classes={num_classes} must be a positive integer')
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.warehouse_manager = WarehouseManager(
            budget=budget, reduction=reduction, attention_norm=attention_norm,
            attention_init=attention_init, attention_function=attention_function,
            recompute_kernels=recompute_kernels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = KWConv2d(in_channels, num_classes, 1, bias=bias,
                           warehouse_manager=self.warehouse_manager,
                           warehouse_name='classifier')
        self.warehouse_manager.build(self)

    def init_weights(self) -> None:
        super().init_weights()
        if not (isinstance(self.init_cfg, dict) and self.init_cfg.get('type') == 'Pretrained'):
            reset_dynamic_attentions(self)  # an init_cfg on 'Linear' must not reach the attention

    def pre_logits(self, feats: Tuple[torch.Tensor]) -> torch.Tensor:
        """The last feature, ``[B, in_channels]`` (pooled by the neck)."""
        return feats[-1]

    def forward(self, feats: Tuple[torch.Tensor]) -> torch.Tensor:
        x = self.dropout(self.pre_logits(feats))
        if x.dim() != 2 or x.shape[1] != self.in_channels:
            raise ValueError(f'KWLinearClsHead expects pooled features [B, {self.in_channels}] '
                             f'(add neck=dict(type=\'GlobalAveragePooling\')), got '
                             f'{list(x.shape)}')
        # the classifier is a 1x1 KW conv on a 1x1 map, as the release's KWLinear is a KW conv
        # of kernel 1 on a length-1 sequence
        return self.fc(x[:, :, None, None]).flatten(1)
