"""Vision Transformer (DeiT) with Kernel Warehouse linear layers (paper §4.3, Table 11).

The paper represents "each of partitioned cells of weight matrices for value and MLP layers" of
DeiT as mixtures of warehouses "shared across multiple multi-head self-attention blocks and MLP
blocks, except the query and key matrices". It gives no code, grouping or reduction; the
layouts below were found by searching for the four Table 11 parameter counts (the search and
its arithmetic: ``docs/kw_vit.md``). Cells follow the release's budget convention (gcd cells
for b >= 1, half-gcd cells for 1/2x), the attentions are KW's (BatchNorm, one per layer), and
every KW layer is a :class:`~mmkw.ops.KWLinear` whose attention averages all tokens.

Layouts (``layout``; None takes the Table 11 layout of the arch and budget, see
``TABLE11_LAYOUTS``; other combinations take ``'small-3/4x'`` for budget '3/4x', ``'tiny-4x'``
for b > 1, else ``'small-1x'``):

- ``'tiny-1x'``: the value and output projections of all blocks share one warehouse, ``fc1``
  and ``fc2`` of each 4 consecutive blocks one; reduction 1/16. DeiT-Tiny KW 1x: 6,387,424
  (6.39M).
- ``'tiny-4x'``: value and output projections per 3 blocks, MLPs per 2 blocks; reduction 1/8.
  DeiT-Tiny KW 4x: 20,438,752 (20.44M; no layout with reduction 1/16 and gcd cells gives it).
- ``'small-1x'``: the four layers of each 3 blocks share one warehouse; reduction 1/16.
  DeiT-Small KW 1x: 24,356,080 (24.36M).
- ``'small-3/4x'``: as ``'small-1x'``, the last two warehouses at 1/2x (half-gcd cells,
  b = 1/2), as the paper's KW 3/4x ConvNeXt halves its last two groups; reduction 1/32.
  DeiT-Small KW 3/4x: 19,226,908 (19.23M).
- ``'value_mlp'``: the paper's words taken literally (output projection static): values per 6
  blocks, MLPs per 6 blocks, reduction 1/16. DeiT-Tiny KW 1x: 6,392,092 (also 6.39M).

Counts include a 1000-class head. Table 11 prints DeiT-Small as 22.06M where mmpretrain and timm
count 22,050,664, so it may round up: the Table 11 layouts print as the table both rounded to
nearest and rounded up.

A layout dict has ``warehouses``, a sequence of ``dict(layers=(...), blocks=..., budgets=...)``:
``layers`` from ``('value', 'proj', 'fc1', 'fc2')`` share one warehouse per group of
``blocks`` consecutive blocks (an int dividing the depth, None for all blocks, or a sequence
of group lengths); ``budgets`` optionally gives each group its budget. Layers in no warehouse
stay static. ``reduction`` is the attention hidden-width ratio. Warehouses are named
``layers{first}-{last}.{layer+layer}`` (``warehouse_manager.summary()``).

State dict: mmpretrain's ``VisionTransformer`` names for every static weight, so a plain DeiT
checkpoint initialises the static parts. With a KW value projection the fused ``qkv`` linear is
split: ``attn.qk`` holds rows ``[0, 2C)`` of ``qkv.weight`` and ``qkv.bias`` (the query rows,
then the key rows, heads in order, as mmpretrain reshapes them), and rows ``[2C, 3C)`` are the
value: its bias loads into ``attn.v.bias``; its weight has no counterpart (the value weight is
assembled from the warehouse), so it is offered as ``attn.v.weight`` and reported as an
unexpected key, like the plain ``weight`` of every other KW layer. KW layers add
``<layer>.attention.*`` and the backbone ``warehouse_manager.weights.{w}``.
"""
import copy
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_activation_layer
from mmcv.cnn.bricks.drop import build_dropout
from mmcv.cnn.bricks.scale import LayerScale as FFNLayerScale
from mmcv.cnn.bricks.transformer import FFN, PatchEmbed
from mmengine.model import BaseModule, ModuleList
from mmengine.registry import MODELS
from mmpretrain.models.backbones.base_backbone import BaseBackbone
from mmpretrain.models.backbones.vision_transformer import (TransformerEncoderLayer,
                                                            VisionTransformer)
from mmpretrain.models.utils import LayerScale, build_norm_layer, to_2tuple

from mmkw.ops import Budget, KWLinear, WarehouseManager
from .utils import batch_norms_to_eval, is_pretrained, reset_dynamic_attentions

KW_LAYERS = ('value', 'proj', 'fc1', 'fc2')

# The layouts reproducing Table 11 (see the module docstring and docs/kw_vit.md).
LAYOUTS: Dict[str, dict] = {
    'tiny-1x': dict(warehouses=(dict(layers=('value', 'proj'), blocks=None),
                                dict(layers=('fc1', 'fc2'), blocks=4)),
                    reduction=1 / 16),
    'tiny-4x': dict(warehouses=(dict(layers=('value', 'proj'), blocks=3),
                                dict(layers=('fc1', 'fc2'), blocks=2)),
                    reduction=1 / 8),
    'small-1x': dict(warehouses=(dict(layers=KW_LAYERS, blocks=3), ), reduction=1 / 16),
    'small-3/4x': dict(warehouses=(dict(layers=KW_LAYERS, blocks=3), ), reduction=1 / 32),
    'value_mlp': dict(warehouses=(dict(layers=('value', ), blocks=6),
                                  dict(layers=('fc1', 'fc2'), blocks=6)),
                      reduction=1 / 16),
}
# (arch, budget) of the Table 11 rows -> their layout
TABLE11_LAYOUTS = {('deit-tiny', '1x'): 'tiny-1x', ('deit-tiny', '4x'): 'tiny-4x',
                   ('deit-small', '1x'): 'small-1x', ('deit-small', '3/4x'): 'small-3/4x'}


def _linear(in_features: int, out_features: int, bias: bool,
            kw_cfg: Optional[dict]) -> nn.Module:
    """``nn.Linear``, or a :class:`~mmkw.ops.KWLinear` from ``kw_cfg`` (its warehouse)."""
    if kw_cfg is None:
        return nn.Linear(in_features, out_features, bias=bias)
    return KWLinear(in_features, out_features, bias=bias, **kw_cfg)


class KWMultiheadAttention(BaseModule):
    """mmpretrain's ``MultiheadAttention`` with a KW value projection and output projection.

    Query and key stay static (``qk``, ``[2C, C]``); the value projection ``v`` and the output
    projection ``proj`` are :class:`~mmkw.ops.KWLinear` layers when given a ``kw_cfg``. Without
    a KW value the fused static ``qkv`` of mmpretrain is kept, state dict included.

    Args:
        embed_dims: C.
        num_heads: attention heads.
        attn_drop: dropout of the attention weights.
        proj_drop: dropout after the output projection.
        dropout_layer: dropout config before the shortcut (DropPath).
        qkv_bias: biases of query, key and value.
        layer_scale_init_value: > 0 adds mmpretrain's layer scale ``gamma1``.
        value_kw_cfg: ``dict(warehouse_manager=..., warehouse_name=..., budget=...)`` of the
            value projection, or None (static, fused ``qkv``).
        proj_kw_cfg: the same for the output projection.

    Forward: ``[B, N, C]`` -> ``[B, N, C]``.
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 attn_drop: float = 0.,
                 proj_drop: float = 0.,
                 dropout_layer: dict = dict(type='Dropout', drop_prob=0.),
                 qkv_bias: bool = True,
                 layer_scale_init_value: float = 0.,
                 value_kw_cfg: Optional[dict] = None,
                 proj_kw_cfg: Optional[dict] = None,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        if embed_dims % num_heads:
            raise ValueError(f'embed_dims={embed_dims} must be divisible by num_heads='
                             f'{num_heads}')
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.head_dims = embed_dims // num_heads
        self.split_value = value_kw_cfg is not None
        if self.split_value:
            self.qk = nn.Linear(embed_dims, embed_dims * 2, bias=qkv_bias)
            self.v = KWLinear(embed_dims, embed_dims, bias=qkv_bias, **value_kw_cfg)
        else:
            self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = _linear(embed_dims, embed_dims, True, proj_kw_cfg)
        self.proj_drop = nn.Dropout(proj_drop)
        self.out_drop = build_dropout(dropout_layer)
        self.gamma1 = LayerScale(embed_dims, layer_scale_init_value=layer_scale_init_value) \
            if layer_scale_init_value > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        if self.split_value:
            qk = self.qk(x).reshape(batch, tokens, 2, self.num_heads, self.head_dims)
            q, k = qk.permute(2, 0, 3, 1, 4)
            v = self.v(x).reshape(batch, tokens, self.num_heads, self.head_dims).transpose(1, 2)
        else:
            qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dims)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn_drop = self.attn_drop if self.training else 0.
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=attn_drop)
        x = x.transpose(1, 2).reshape(batch, tokens, self.embed_dims)
        x = self.proj(x)
        return self.out_drop(self.gamma1(self.proj_drop(x)))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A plain checkpoint's fused qkv: query and key rows go to the static qk, the value
        # bias to the KW value layer; the value weight has no counterpart and is passed on
        # under the value layer's name, where loading reports it as an unexpected key.
        if self.split_value:
            channels = self.embed_dims
            for kind in ('weight', 'bias'):
                fused = state_dict.pop(f'{prefix}qkv.{kind}', None)
                if fused is None:
                    continue
                if fused.shape[0] != 3 * channels:
                    raise ValueError(f'{prefix}qkv.{kind} has shape {list(fused.shape)}, but a '
                                     f'fused qkv of embed_dims={channels} has {3 * channels} '
                                     'rows: the checkpoint is of another architecture')
                state_dict.setdefault(f'{prefix}qk.{kind}', fused[:2 * channels])
                state_dict.setdefault(f'{prefix}v.{kind}', fused[2 * channels:])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


class KWFFN(FFN):
    """mmcv's ``FFN`` (two fully connected layers) whose layers may be KW layers, with the
    same module names: ``layers.0.0`` (fc1), ``layers.1`` (fc2), ``gamma2``.

    Args:
        embed_dims: C.
        feedforward_channels: hidden width.
        act_cfg: activation after fc1.
        ffn_drop: dropout after the activation and after fc2.
        dropout_layer: dropout config before the shortcut (DropPath).
        layer_scale_init_value: > 0 adds mmcv's layer scale ``gamma2``.
        fc1_kw_cfg, fc2_kw_cfg: warehouse configs of the KW layers, or None (static).
    """

    def __init__(self,
                 embed_dims: int,
                 feedforward_channels: int,
                 act_cfg: dict = dict(type='GELU'),
                 ffn_drop: float = 0.,
                 dropout_layer: Optional[dict] = None,
                 layer_scale_init_value: float = 0.,
                 fc1_kw_cfg: Optional[dict] = None,
                 fc2_kw_cfg: Optional[dict] = None,
                 init_cfg=None) -> None:
        # FFN's constructor builds static linear layers; only its structure and forward are
        # reused here
        BaseModule.__init__(self, init_cfg)
        self.embed_dims = embed_dims
        self.feedforward_channels = feedforward_channels
        self.num_fcs = 2
        self.layers = nn.Sequential(
            nn.Sequential(_linear(embed_dims, feedforward_channels, True, fc1_kw_cfg),
                          build_activation_layer(act_cfg), nn.Dropout(ffn_drop)),
            _linear(feedforward_channels, embed_dims, True, fc2_kw_cfg), nn.Dropout(ffn_drop))
        self.dropout_layer = build_dropout(dropout_layer) if dropout_layer else nn.Identity()
        self.add_identity = True
        self.gamma2 = FFNLayerScale(embed_dims, scale=layer_scale_init_value) \
            if layer_scale_init_value > 0 else nn.Identity()


class KWTransformerEncoderLayer(TransformerEncoderLayer):
    """mmpretrain's ViT encoder layer with KW layers where ``kw_cfgs`` says.

    Args:
        embed_dims, num_heads, feedforward_channels, layer_scale_init_value, drop_rate,
        attn_drop_rate, drop_path_rate, qkv_bias, act_cfg, norm_cfg: as mmpretrain's
            ``TransformerEncoderLayer`` (two FFN layers, ``ffn_type='origin'``).
        kw_cfgs: per layer name (``'value'``, ``'proj'``, ``'fc1'``, ``'fc2'``) the warehouse
            config of a KW layer; absent names are static.
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 feedforward_channels: int,
                 layer_scale_init_value: float = 0.,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 qkv_bias: bool = True,
                 act_cfg: dict = dict(type='GELU'),
                 norm_cfg: dict = dict(type='LN'),
                 kw_cfgs: Optional[Dict[str, dict]] = None,
                 init_cfg=None) -> None:
        # TransformerEncoderLayer's constructor hard-codes its attention and FFN classes;
        # its forward, norms and properties are reused
        BaseModule.__init__(self, init_cfg=init_cfg)
        kw_cfgs = kw_cfgs or {}
        unknown = set(kw_cfgs) - set(KW_LAYERS)
        if unknown:
            raise ValueError(f'unknown KW layer names {sorted(unknown)}; use {KW_LAYERS}')
        self.embed_dims = embed_dims
        self.ln1 = build_norm_layer(norm_cfg, embed_dims)
        drop_path = dict(type='DropPath', drop_prob=drop_path_rate)
        self.attn = KWMultiheadAttention(
            embed_dims, num_heads, attn_drop=attn_drop_rate, proj_drop=drop_rate,
            dropout_layer=drop_path, qkv_bias=qkv_bias,
            layer_scale_init_value=layer_scale_init_value,
            value_kw_cfg=kw_cfgs.get('value'), proj_kw_cfg=kw_cfgs.get('proj'))
        self.ln2 = build_norm_layer(norm_cfg, embed_dims)
        self.ffn = KWFFN(embed_dims, feedforward_channels, act_cfg=act_cfg, ffn_drop=drop_rate,
                         dropout_layer=drop_path, layer_scale_init_value=layer_scale_init_value,
                         fc1_kw_cfg=kw_cfgs.get('fc1'), fc2_kw_cfg=kw_cfgs.get('fc2'))

    def init_weights(self) -> None:
        BaseModule.init_weights(self)
        # mmpretrain's FFN init (xavier weights, tiny biases) for the static layers; KW layers
        # keep their warehouse init and get the same tiny bias
        for layer in (self.ffn.layers[0][0], self.ffn.layers[1]):
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.normal_(layer.bias, std=1e-6)


def _resolve_layout(layout: Union[None, str, dict], budget, arch: Optional[str]) -> dict:
    """A copy of the layout dict: the given one, a preset by name, or for None the Table 11
    layout of ``arch`` ('deit-tiny', 'deit-small' or None) and ``budget``, else a default by
    budget (module docstring)."""
    if layout is None:
        if _is_three_quarters(budget):
            key = '3/4x'
        else:
            key = next((name for name in ('1x', '4x')
                        if Budget.parse(budget) == Budget.parse(name)), None)
        layout = TABLE11_LAYOUTS.get((arch, key))
        if layout is None:
            layout = 'small-3/4x' if key == '3/4x' else \
                'tiny-4x' if Budget.parse(budget).b > 1 else 'small-1x'
    if isinstance(layout, str):
        if layout not in LAYOUTS:
            raise ValueError(f'unknown KW ViT layout {layout!r}; presets: {sorted(LAYOUTS)}, or '
                             'a dict(warehouses=[dict(layers=..., blocks=...)], reduction=...)')
        return copy.deepcopy(LAYOUTS[layout])
    if not isinstance(layout, dict) or 'warehouses' not in layout:
        raise TypeError('layout must be None, a preset name or a dict with "warehouses" (and '
                        f'optionally "reduction"), got {layout!r}')
    unknown = set(layout) - {'warehouses', 'reduction'}
    if unknown:
        raise ValueError(f'unknown layout keys {sorted(unknown)}; expected warehouses, reduction')
    return copy.deepcopy(dict(layout))


def _is_three_quarters(budget) -> bool:
    return isinstance(budget, str) and budget.replace(' ', '') in ('3/4x', '0.75x')


def block_groups(blocks: Union[None, int, Sequence[int]], num_layers: int,
                 where: str) -> List[Tuple[int, int]]:
    """``(first, end)`` block ranges of a warehouse kind: ``blocks`` consecutive blocks per
    warehouse (an int dividing ``num_layers``), all blocks (None), or explicit group lengths."""
    if blocks is None:
        lengths = [num_layers]
    elif isinstance(blocks, int) and not isinstance(blocks, bool):
        if blocks < 1 or num_layers % blocks:
            raise ValueError(f'{where}: blocks={blocks} must be a positive divisor of the '
                             f'depth {num_layers} (or None for all blocks, or a list of group '
                             'lengths)')
        lengths = [blocks] * (num_layers // blocks)
    else:
        lengths = list(blocks)
        if not lengths or any(not isinstance(n, int) or n < 1 for n in lengths) or \
                sum(lengths) != num_layers:
            raise ValueError(f'{where}: group lengths {lengths} must be positive integers '
                             f'summing to the depth {num_layers}')
    groups, first = [], 0
    for length in lengths:
        groups.append((first, first + length))
        first += length
    return groups


@MODELS.register_module()
class KWVisionTransformer(VisionTransformer):
    """DeiT / ViT with Kernel Warehouse value projections and MLPs (paper §4.3, Table 11).

    Same interface and state-dict names as mmpretrain's ``VisionTransformer`` (``arch``
    'deit-tiny', 'deit-small', 'deit-base' or any of its archs, ``img_size``, ``patch_size``,
    ``out_indices``, ``out_type``, ``frozen_stages``, ``init_cfg``, ...), for mmpretrain
    classifiers and mmdet detectors alike, plus the KW options below. See the module docstring
    for the layouts and the state dict.

    Args:
        arch: mmpretrain's ViT arch name or dict.
        budget: KW budget b (paper §3.3): '1x', '4x', '3/4x' (1x warehouses and, in the second
            half of each kind's groups, 1/2x ones), '1/2x', '2x', any '<ratio>x', a number or a
            dict of the cell ratios; None builds mmpretrain's plain ViT (fused ``qkv``).
        layout: None (the Table 11 layout of the arch and budget, else a default by budget),
            a preset name of ``LAYOUTS``, or a layout dict (module docstring).
        reduction: attention hidden width ratio; None takes the layout's.
        attention_init: 'one_to_one' (A.2; the tau schedule applies) or None to hold tau at 0
            (fine-tuning, A.1.2); Table 13's 'all_to_one', 'n_to_one', 'one_to_n'.
        attention_function: 'caf' (Eq. 4) or Table 8's 'softmax', 'sigmoid', 'relu_norm'.
        nonlocal_basis_ratio: < 1 enables the nonlocal-basis attention.
        recompute_kernels: True, False or 'auto': assemble large per-sample weights again in
            the backward pass instead of keeping them (see :class:`~mmkw.ops.WarehouseManager`).
        norm_eval: keep the attentions' BatchNorm layers in eval mode (small-batch
            fine-tuning).
        **kwargs: the other arguments of mmpretrain's ``VisionTransformer`` (``layer_cfgs``
            may override the encoder-layer arguments, not the KW layers).
    """

    def __init__(self,
                 arch: Union[str, dict] = 'deit-tiny',
                 img_size=224,
                 patch_size=16,
                 in_channels: int = 3,
                 out_indices=-1,
                 drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 qkv_bias: bool = True,
                 norm_cfg: dict = dict(type='LN', eps=1e-6),
                 final_norm: bool = True,
                 out_type: str = 'cls_token',
                 with_cls_token: bool = True,
                 frozen_stages: int = -1,
                 interpolate_mode: str = 'bicubic',
                 layer_scale_init_value: float = 0.,
                 patch_cfg: dict = dict(),
                 layer_cfgs: Union[dict, Sequence[dict]] = dict(),
                 pre_norm: bool = False,
                 budget='1x',
                 layout: Union[None, str, dict] = None,
                 reduction: Optional[float] = None,
                 attention_init: Optional[str] = 'one_to_one',
                 attention_function: str = 'caf',
                 nonlocal_basis_ratio: float = 1.0,
                 recompute_kernels: Union[bool, str] = 'auto',
                 norm_eval: bool = False,
                 init_cfg=None) -> None:
        # VisionTransformer's constructor hard-codes its encoder layer class: its set-up is
        # repeated here, and its forward, output formats, position-embedding resizing (also
        # when loading), layer-wise depth and init are inherited.
        BaseBackbone.__init__(self, init_cfg)
        if isinstance(arch, str):
            arch = arch.lower()
            if arch not in self.arch_zoo:
                raise ValueError(f'arch {arch!r} is not one of {sorted(self.arch_zoo)}; or give '
                                 'a dict with embed_dims, num_layers, num_heads, '
                                 'feedforward_channels')
            self.arch_settings = self.arch_zoo[arch]
        else:
            essential = {'embed_dims', 'num_layers', 'num_heads', 'feedforward_channels'}
            if not isinstance(arch, dict) or not essential <= set(arch):
                raise ValueError(f'a custom arch needs a dict with keys {sorted(essential)}, '
                                 f'got {arch!r}')
            self.arch_settings = arch
        self.embed_dims = self.arch_settings['embed_dims']
        self.num_layers = self.arch_settings['num_layers']
        self.img_size = to_2tuple(img_size)
        self.budget = budget
        self.norm_eval = norm_eval

        patch = dict(in_channels=in_channels, input_size=img_size, embed_dims=self.embed_dims,
                     conv_type='Conv2d', kernel_size=patch_size, stride=patch_size,
                     bias=not pre_norm)
        patch.update(patch_cfg)
        self.patch_embed = PatchEmbed(**patch)
        self.patch_resolution = self.patch_embed.init_out_size
        num_patches = self.patch_resolution[0] * self.patch_resolution[1]

        if out_type not in self.OUT_TYPES:
            raise ValueError(f'out_type must be one of {sorted(self.OUT_TYPES)}, got '
                             f'{out_type!r}')
        self.out_type = out_type
        self.with_cls_token = with_cls_token
        if with_cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, self.embed_dims))
        elif out_type != 'cls_token':
            self.cls_token = None
            self.num_extra_tokens = 0
        else:
            raise ValueError('with_cls_token must be True when out_type="cls_token"')
        self.interpolate_mode = interpolate_mode
        self.pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + self.num_extra_tokens, self.embed_dims))
        self._register_load_state_dict_pre_hook(self._prepare_pos_embed)
        self.drop_after_pos = nn.Dropout(p=drop_rate)

        if isinstance(out_indices, int):
            out_indices = [out_indices]
        out_indices = list(out_indices)
        for i, index in enumerate(out_indices):
            if index < 0:
                out_indices[i] = self.num_layers + index
            if not 0 <= out_indices[i] < self.num_layers:
                raise ValueError(f'out_indices {index} is out of range for '
                                 f'{self.num_layers} layers')
        self.out_indices = out_indices

        self.warehouse_manager = None
        self.layout = None
        kw_cfgs = [{} for _ in range(self.num_layers)]
        if budget is not None:
            family = next((name for name in ('deit-tiny', 'deit-small')
                           if self.arch_settings is self.arch_zoo[name]), None)
            self.layout = _resolve_layout(layout, budget, family)
            if reduction is not None:
                self.layout['reduction'] = reduction
            self.warehouse_manager = WarehouseManager(
                budget='1x' if _is_three_quarters(budget) else budget,
                reduction=self.layout.get('reduction', 1 / 16),
                nonlocal_basis_ratio=nonlocal_basis_ratio, attention_init=attention_init,
                attention_function=attention_function, recompute_kernels=recompute_kernels)
            kw_cfgs = self._kw_cfgs(self.layout, budget)
        elif layout is not None:
            raise ValueError('layout applies to KW models: give a budget (budget=None is the '
                             'plain ViT)')

        dpr = np.linspace(0, drop_path_rate, self.num_layers)
        if isinstance(layer_cfgs, dict):
            layer_cfgs = [layer_cfgs] * self.num_layers
        if len(layer_cfgs) != self.num_layers:
            raise ValueError(f'layer_cfgs has {len(layer_cfgs)} entries for {self.num_layers} '
                             'layers')
        self.layers = ModuleList()
        for i in range(self.num_layers):
            layer_cfg = dict(
                embed_dims=self.embed_dims, num_heads=self.arch_settings['num_heads'],
                feedforward_channels=self.arch_settings['feedforward_channels'],
                layer_scale_init_value=layer_scale_init_value, drop_rate=drop_rate,
                drop_path_rate=dpr[i], qkv_bias=qkv_bias, norm_cfg=norm_cfg)
            layer_cfg.update(layer_cfgs[i])
            if layer_cfg.pop('ffn_type', 'origin') != 'origin' or \
                    layer_cfg.pop('num_fcs', 2) != 2:
                raise ValueError("KWVisionTransformer supports ffn_type='origin' with num_fcs=2 "
                                 '(the DeiT MLP) only')
            self.layers.append(KWTransformerEncoderLayer(**layer_cfg, kw_cfgs=kw_cfgs[i]))

        self.frozen_stages = frozen_stages
        self.pre_norm = build_norm_layer(norm_cfg, self.embed_dims) if pre_norm \
            else nn.Identity()
        self.final_norm = final_norm
        if final_norm:
            self.ln1 = build_norm_layer(norm_cfg, self.embed_dims)
        if self.out_type == 'avg_featmap':
            self.ln2 = build_norm_layer(norm_cfg, self.embed_dims)

        if self.warehouse_manager is not None:
            self.warehouse_manager.build(self)
        if self.frozen_stages > 0:
            self._freeze_stages()

    def _kw_cfgs(self, layout: dict, budget) -> List[Dict[str, dict]]:
        """Per block, the warehouse config of each of its KW layers."""
        warehouses = layout['warehouses']
        if isinstance(warehouses, dict) or not warehouses:
            raise ValueError('layout warehouses must be a non-empty sequence of '
                             'dict(layers=..., blocks=..., budgets=...)')
        kw_cfgs: List[Dict[str, dict]] = [{} for _ in range(self.num_layers)]
        seen = set()
        for kind, spec in enumerate(warehouses):
            where = f'KWVisionTransformer layout warehouses[{kind}]'
            unknown = set(spec) - {'layers', 'blocks', 'budgets'}
            if unknown:
                raise ValueError(f'{where}: unknown keys {sorted(unknown)}; expected layers, '
                                 'blocks, budgets')
            layers = tuple(spec['layers']) if 'layers' in spec else ()
            if not layers or any(name not in KW_LAYERS for name in layers):
                raise ValueError(f'{where}: layers {layers} must be names from {KW_LAYERS}')
            if seen & set(layers):
                raise ValueError(f'{where}: layers {sorted(seen & set(layers))} are already in '
                                 'another warehouse kind; each layer shares one warehouse')
            seen |= set(layers)
            groups = block_groups(spec.get('blocks'), self.num_layers, where)
            budgets = spec.get('budgets')
            if budgets is None:
                budgets = [None] * len(groups)
                if _is_three_quarters(budget):
                    if len(groups) % 2:
                        raise ValueError(
                            f"{where}: budget '3/4x' makes the second half of each kind's "
                            f'warehouses 1/2x, but {"+".join(layers)} has {len(groups)} '
                            'groups; use an even number of groups or give budgets=[...] per '
                            'group')
                    half = len(groups) // 2
                    budgets = ['1x'] * half + ['1/2x'] * half
            elif len(budgets) != len(groups):
                raise ValueError(f'{where}: {len(budgets)} budgets for {len(groups)} groups')
            for (first, end), group_budget in zip(groups, budgets):
                name = f'layers{first}-{end - 1}.{"+".join(layers)}'
                for block in range(first, end):
                    for layer in layers:
                        kw_cfgs[block][layer] = dict(
                            warehouse_manager=self.warehouse_manager, warehouse_name=name,
                            budget=group_budget)
        return kw_cfgs

    def _freeze_stages(self) -> None:
        super()._freeze_stages()
        if self.warehouse_manager is not None and self.frozen_stages > 0:
            # frozen blocks compute a fixed function: the warehouses they draw from freeze too
            self.warehouse_manager.freeze_warehouses_of(self.layers[:self.frozen_stages])

    def init_weights(self) -> None:
        super().init_weights()
        if not is_pretrained(self.init_cfg):
            # a model-level init_cfg on 'Linear' (mmpretrain's DeiT configs) also reaches the
            # attentions' layers, which KW initialises itself
            reset_dynamic_attentions(self)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.frozen_stages > 0:
            self._freeze_stages()
        if mode and self.norm_eval:
            batch_norms_to_eval(self)
        return self
