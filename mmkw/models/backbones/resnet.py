"""ResNet for every dynamic conv method (KW, ODConv, DY-Conv, KW*), with mmpretrain's and
mmdet's ResNet interface.

:class:`DynamicResNet` takes the method as ``conv_cfg`` (see :mod:`mmkw.models.conv_methods`),
which chooses the dynamic convs and their sharing::

    backbone=dict(type='DynamicResNet', depth=50, conv_cfg=dict(type='ODConv', kernel_num=4))
    backbone=dict(type='DynamicResNet', depth=18, conv_cfg=dict(type='KW', budget='1x'))

``conv_cfg=None`` builds the plain network with identical structure and names (a baseline that
loads mmpretrain's ResNet checkpoints). :class:`KWResNet`, :class:`ODConvResNet` and
:class:`DyConvResNet` are the same backbone with their method's options as arguments, the
names configs use.

Each conv is described to the method by its role (``'stem'``, ``'conv'``, ``'downsample'``), its
stage and its *sharing stage*: the first block of stage ``s`` (0-based) hands its first conv
and its shortcut conv to stage ``s - 1`` (KW's Table 15; -1, i.e. before the first stage, in
stage 0), which methods that share parameters across a stage use (see
:mod:`mmkw.models.conv_methods.kw` for KW's warehouses and the sharing ablations).

Freezing (``frozen_stages = k``): the stem, stages ``1..k`` and the shared parameters they use
(KW: the warehouses ``0..k-1``) are frozen, so the frozen stages compute a fixed function; the
entry convs of stage ``k + 1`` keep trainable attentions over the frozen cells of warehouse
``k-1``.
"""
import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn import ConvModule, build_conv_layer, build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule
from mmengine.registry import MODELS

from ..conv_methods import ConvMethodLike
from ..conv_methods.kw import SHARING_DIMS, SHARING_RANGES  # noqa: F401 (re-export)
from .utils import DynamicBackbone


class KWBasicBlock(BaseModule):
    """ResNet basic block whose 3x3 convs are built from ``conv_cfgs`` (two entries, each a
    static or dynamic conv); the first conv has the stride and the dilation."""
    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int,
                 conv_cfgs: Sequence[Optional[dict]], downsample: Optional[nn.Module],
                 norm_cfg: dict, drop_path_rate: float = 0.0, with_cp: bool = False,
                 dilation: int = 1, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.with_cp = with_cp
        self.conv1 = build_conv_layer(conv_cfgs[0], in_channels, out_channels, 3, stride=stride,
                                      padding=dilation, dilation=dilation, bias=False)
        self.bn1 = build_norm_layer(norm_cfg, out_channels)[1]
        self.conv2 = build_conv_layer(conv_cfgs[1], out_channels, out_channels, 3, padding=1,
                                      bias=False)
        self.bn2 = build_norm_layer(norm_cfg, out_channels)[1]
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    @property
    def last_norm(self) -> nn.Module:
        return self.bn2

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.drop_path(out) + identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            out = cp.checkpoint(self._residual, x, use_reentrant=False)
        else:
            out = self._residual(x)
        return self.relu(out)


class KWBottleneck(BaseModule):
    """ResNet bottleneck (pytorch style: stride on the 3x3 conv); ``conv_cfgs`` has three
    entries."""
    expansion = 4

    def __init__(self, in_channels: int, out_channels: int, stride: int,
                 conv_cfgs: Sequence[Optional[dict]], downsample: Optional[nn.Module],
                 norm_cfg: dict, drop_path_rate: float = 0.0, with_cp: bool = False,
                 dilation: int = 1, init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        mid = out_channels // self.expansion
        self.with_cp = with_cp
        self.conv1 = build_conv_layer(conv_cfgs[0], in_channels, mid, 1, bias=False)
        self.bn1 = build_norm_layer(norm_cfg, mid)[1]
        self.conv2 = build_conv_layer(conv_cfgs[1], mid, mid, 3, stride=stride,
                                      padding=dilation, dilation=dilation, bias=False)
        self.bn2 = build_norm_layer(norm_cfg, mid)[1]
        self.conv3 = build_conv_layer(conv_cfgs[2], mid, out_channels, 1, bias=False)
        self.bn3 = build_norm_layer(norm_cfg, out_channels)[1]
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    @property
    def last_norm(self) -> nn.Module:
        return self.bn3

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.drop_path(out) + identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            out = cp.checkpoint(self._residual, x, use_reentrant=False)
        else:
            out = self._residual(x)
        return self.relu(out)


@MODELS.register_module()
class DynamicResNet(DynamicBackbone):
    """ResNet backbone whose convs follow a dynamic conv method.

    Same interface as mmpretrain's / mmdet's ``ResNet`` (pytorch style), plus ``conv_cfg``.

    Args:
        depth: 18, 34, 50, 101 or 152.
        conv_cfg: the conv method, e.g. ``dict(type='KW', budget='1x')``,
            ``dict(type='ODConv', kernel_num=4)``, ``dict(type='DyConv')``,
            ``dict(type='KWStar', budget='4x')``; None for plain convs.
        in_channels: input image channels.
        stem_channels: output channels of the stem.
        stem_kernel_size: kernel of the stem conv (7; 3 for small inputs).
        stem_stride: stride of the stem conv (2; 1 for small inputs).
        stem_pool: max-pool after the stem (True; False for small inputs).
        deep_stem: three 3x3 convs instead of the one stem conv (ResNet-C / ResNetV1c); the
            stem stays static for every method.
        avg_down: shortcut by 2x2 average pooling, then a stride-1 1x1 conv (ResNet-D).
        base_channels: channels of the first stage (before expansion).
        num_stages: 1 to 4.
        strides: stride of the first block of each stage.
        dilations: dilation of each stage's 3x3 convs (its padding follows); None: all 1.
        out_indices: stages whose outputs are returned (0-based).
        style: 'pytorch' only (stride on the 3x3 conv), as the released dynamic-conv models.
        frozen_stages: stages to freeze with the shared parameters they use (-1: none, 0: only
            the stem).
        norm_cfg: norm of the conv blocks.
        norm_eval: keep every BatchNorm (the attentions' included) in eval mode while training.
        with_cp: gradient checkpointing of the blocks.
        zero_init_residual: zero-init the last norm of each block (not for pretrained weights).
        drop_path_rate: stochastic depth of the blocks.
        drop_path_schedule: 'linear' (rising over the blocks from 0 to ``drop_path_rate``, as
            mmpretrain's models) or 'uniform' (``drop_path_rate`` in every block, as the KW
            release's ResNets).
        init_cfg: mmengine init config; ``dict(type='Pretrained', checkpoint=..., prefix=...)``
            loads weights. Non-pretrained inits keep the methods' own attention init.

    Forward: ``[B, in_channels, H, W]`` -> tuple of feature maps of the ``out_indices`` stages,
    ``[B, base_channels * 2**i * expansion, H / 2**(i+2), W / 2**(i+2)]`` with the default stem.
    """

    arch_settings = {
        18: (KWBasicBlock, (2, 2, 2, 2)),
        34: (KWBasicBlock, (3, 4, 6, 3)),
        50: (KWBottleneck, (3, 4, 6, 3)),
        101: (KWBottleneck, (3, 4, 23, 3)),
        152: (KWBottleneck, (3, 8, 36, 3)),
    }

    def __init__(self,
                 depth: int,
                 conv_cfg: ConvMethodLike = None,
                 in_channels: int = 3,
                 stem_channels: int = 64,
                 stem_kernel_size: int = 7,
                 stem_stride: int = 2,
                 stem_pool: bool = True,
                 deep_stem: bool = False,
                 avg_down: bool = False,
                 base_channels: int = 64,
                 num_stages: int = 4,
                 strides: Sequence[int] = (1, 2, 2, 2),
                 dilations: Optional[Sequence[int]] = None,
                 out_indices: Sequence[int] = (3, ),
                 style: str = 'pytorch',
                 frozen_stages: int = -1,
                 norm_cfg: dict = dict(type='BN', requires_grad=True),
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 zero_init_residual: bool = False,
                 drop_path_rate: float = 0.0,
                 drop_path_schedule: str = 'linear',
                 init_cfg=(dict(type='Kaiming', layer=['Conv2d']),
                           dict(type='Constant', val=1, layer=['_BatchNorm', 'GroupNorm']))):
        super().__init__(init_cfg=list(init_cfg) if isinstance(init_cfg, tuple) else init_cfg)
        name = type(self).__name__
        if drop_path_schedule not in ('linear', 'uniform'):
            raise ValueError(f"drop_path_schedule must be 'linear' or 'uniform', got "
                             f'{drop_path_schedule!r}')
        if depth not in self.arch_settings:
            raise KeyError(f'invalid depth {depth} for {name}, choose from '
                           f'{sorted(self.arch_settings)}')
        if not 1 <= num_stages <= 4:
            raise ValueError(f'num_stages must be 1 to 4, got {num_stages}')
        dilations = (1, ) * num_stages if dilations is None else tuple(dilations)
        if len(strides) != num_stages or len(dilations) != num_stages:
            raise ValueError(f'strides {tuple(strides)} and dilations {tuple(dilations)} must '
                             f'have num_stages={num_stages} items each')
        if style != 'pytorch':
            raise ValueError(f"{name} supports style='pytorch' only (stride on the 3x3 conv), "
                             'as the released dynamic-conv models')
        if not out_indices or max(out_indices) >= num_stages or min(out_indices) < 0:
            raise ValueError(f'out_indices {tuple(out_indices)} must lie in [0, {num_stages})')
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f'frozen_stages must be in [-1, {num_stages}], got {frozen_stages}')
        self.depth = depth
        self.num_stages = num_stages
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.zero_init_residual = zero_init_residual
        self.deep_stem = deep_stem
        self.avg_down = avg_down
        block, stage_blocks = self.arch_settings[depth]
        self.block = block
        self.stage_blocks = stage_blocks[:num_stages]
        self.setup_method(conv_cfg, 'resnet')

        if deep_stem:
            # ResNetV1c's stem, with mmpretrain's names (stem.{0,1,2}.{conv,bn})
            self.stem = nn.Sequential(*[
                ConvModule(c_in, c_out, 3, stride=stem_stride if i == 0 else 1, padding=1,
                           bias=False, norm_cfg=norm_cfg, inplace=True)
                for i, (c_in, c_out) in enumerate(((in_channels, stem_channels // 2),
                                                   (stem_channels // 2, stem_channels // 2),
                                                   (stem_channels // 2, stem_channels)))])
        else:
            self.conv1 = build_conv_layer(
                self.site_cfg('stem', 'conv1', -1, (stem_channels, in_channels,
                                                    stem_kernel_size), stride=stem_stride),
                in_channels, stem_channels, stem_kernel_size, stride=stem_stride,
                padding=stem_kernel_size // 2, bias=False)
            self.bn1 = build_norm_layer(norm_cfg, stem_channels)[1]
            self.relu = nn.ReLU(inplace=True)
        self.maxpool = (nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
                        if stem_pool else nn.Identity())

        total_blocks = sum(self.stage_blocks)
        dpr = torch.linspace(0, drop_path_rate, total_blocks).tolist() \
            if drop_path_schedule == 'linear' else [drop_path_rate] * total_blocks
        channels = stem_channels
        self.res_layers: List[str] = []
        for stage, num_blocks in enumerate(self.stage_blocks):
            out_channels = base_channels * 2**stage * block.expansion
            layer = self._make_layer(stage, channels, out_channels, num_blocks, strides[stage],
                                     dilations[stage], norm_cfg, dpr[:num_blocks], with_cp)
            dpr = dpr[num_blocks:]
            name = f'layer{stage + 1}'
            self.add_module(name, layer)
            self.res_layers.append(name)
            channels = out_channels
        self.feat_dim = channels
        self.finish_method()

    def _make_layer(self, stage: int, in_channels: int, out_channels: int, num_blocks: int,
                    stride: int, dilation: int, norm_cfg: dict, dpr: Sequence[float],
                    with_cp: bool) -> nn.Sequential:
        previous = stage - 1  # Table 15: entry convs join the previous stage
        layer = f'layer{stage + 1}'

        def site(role, name, shape, share_stage, **kwargs):
            return self.site_cfg(role, f'{layer}.{name}', stage, shape, share_stage=share_stage,
                                 num_blocks=num_blocks, **kwargs)

        downsample = None
        if stride != 1 or in_channels != out_channels:
            # the shortcut's stride is the block's, whether the conv or a pooling takes it
            ds_cfg = site('downsample', '0.downsample', (out_channels, in_channels, 1), previous,
                          stride=stride, block=0)
            conv_stride = 1 if self.avg_down else stride
            shortcut = [build_conv_layer(ds_cfg, in_channels, out_channels, 1,
                                         stride=conv_stride, bias=False),
                        build_norm_layer(norm_cfg, out_channels)[1]]
            if self.avg_down and stride != 1:
                shortcut.insert(0, nn.AvgPool2d(stride, stride, ceil_mode=True,
                                                count_include_pad=False))
            downsample = nn.Sequential(*shortcut)
        blocks = []
        for index in range(num_blocks):
            block_in = in_channels if index == 0 else out_channels
            block_stride = stride if index == 0 else 1
            if self.block is KWBasicBlock:
                first = max(previous, 0) if index == 0 else stage
                conv_cfgs = [
                    site('conv', f'{index}.conv1', (out_channels, block_in, 3), first,
                         stride=block_stride, block=index),
                    site('conv', f'{index}.conv2', (out_channels, out_channels, 3), stage,
                         block=index)]
            else:
                first = previous if index == 0 else stage
                mid = out_channels // self.block.expansion
                conv_cfgs = [
                    site('conv', f'{index}.conv1', (mid, block_in, 1), first, block=index),
                    site('conv', f'{index}.conv2', (mid, mid, 3), stage, stride=block_stride,
                         block=index),
                    site('conv', f'{index}.conv3', (out_channels, mid, 1), stage, block=index)]
            blocks.append(self.block(block_in, out_channels, block_stride, conv_cfgs,
                                     downsample if index == 0 else None, norm_cfg, dpr[index],
                                     with_cp, dilation))
        return nn.Sequential(*blocks)

    def residual_last_norms(self) -> List[nn.Module]:
        return [m.last_norm for m in self.modules() if isinstance(m, (KWBasicBlock, KWBottleneck))]

    def frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        modules = [self.stem] if self.deep_stem else [self.conv1, self.bn1]
        modules += [getattr(self, self.res_layers[i]) for i in range(self.frozen_stages)]
        return modules

    def get_layer_depth(self, param_name: str, prefix: str = '') -> Tuple[int, int]:
        """Layer id of a parameter for layer-wise lr decay, and the number of ids, by
        mmpretrain's rule for ``ResNet.get_layer_depth``: the stem 0, stage 1 one id, stages 2
        and 3 one id per ``blk2`` / ``blk3`` blocks, stage 4 one id, anything after the backbone
        the last id. mmpretrain knows depths 50/101/152 (``blk2, blk3`` = 2, 3 / 2, 3 / 4, 4);
        depth 34 takes 50's grouping and depth 18 one id per block of stages 2 and 3. Shared
        parameters (KW's warehouses) take the id of the first conv that uses them, so no conv
        learns faster than the cells it draws from.

        Args:
            param_name: parameter name, with ``prefix`` (e.g. ``'backbone.'``).
            prefix: the prefix of the backbone's parameters.
        """
        depths = tuple(self.stage_blocks) + (1, ) * (4 - len(self.stage_blocks))
        blk2, blk3 = {2: (1, 1), 4: (2, 3), 8: (4, 4)}.get(depths[1], (2, 3))
        n2, n3 = math.ceil(depths[1] / blk2 - 1e-5), math.ceil(depths[2] / blk3 - 1e-5)
        last_stage_id = 2 + n2 + n3
        max_layer_id = last_stage_id + 1
        if not param_name.startswith(prefix):
            return max_layer_id, max_layer_id + 1
        name = param_name[len(prefix):]
        if name.startswith('warehouse_manager.weights.'):
            index = int(name.split('.')[2])
            users = list(self.warehouse_manager.specs.values())[index].conv_names
            name = users[0] if users else name
        if not name.startswith('layer'):
            return 0, max_layer_id + 1
        stage_id, block_id = (int(v) for v in name[len('layer'):].split('.')[:2])
        if stage_id == 1:
            layer_id = 1
        elif stage_id == 2:
            layer_id = 2 + block_id // blk2
        elif stage_id == 3:
            layer_id = 2 + n2 + block_id // blk3
        else:
            layer_id = last_stage_id
        return layer_id, max_layer_id + 1

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        x = self.stem(x) if self.deep_stem else self.relu(self.bn1(self.conv1(x)))
        x = self.maxpool(x)
        outs = []
        for i, name in enumerate(self.res_layers):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)


def _kw_method_cfg(budget, **options) -> Optional[dict]:
    """``conv_cfg`` of the KW backbones' legacy arguments; ``budget=None``: plain convs."""
    return None if budget is None else dict(type='KW', budget=budget, **options)


@MODELS.register_module()
class KWResNet(DynamicResNet):
    """ResNet with Kernel Warehouse convolutions (paper §4, A.3, Tables 14-15): a
    :class:`DynamicResNet` with ``conv_cfg=dict(type='KW', ...)`` built from these arguments.

    Args:
        depth: 18, 34, 50, 101 or 152.
        budget: convolutional parameter budget b (paper §3.3): '1/4x', '1/2x', '1x', '2x',
            '4x', any '<ratio>x', a number, or a dict of the three cell ratios. None builds the
            same network with normal convs (a plain baseline of identical structure).
        reduction: attention hidden width ratio (1/16).
        nonlocal_basis_ratio: < 1 enables the nonlocal-basis attention (1/16 for the
            release's ResNet50 KW 1/2x).
        attention_init: 'one_to_one' (paper A.2; tau schedules apply) or None to disable the
            init strategy, holding tau at 0 (fine-tuning, A.1.2); the ablations of Table 13:
            'all_to_one', 'n_to_one' (b > 1), 'one_to_n' (b < 1).
        attention_function: 'caf' (the paper's, Eq. 4) or the ablations of Table 8:
            'softmax', 'sigmoid', 'relu_norm' (``max(z, 0) / sum|z|``).
        recompute_kernels: assemble large per-sample kernels again in the backward pass
            instead of keeping them (True, False or 'auto'; see
            :class:`~mmkw.ops.WarehouseManager`).
        sharing: warehouse sharing range in terms of layers (Table 6): 'stage' (the paper's,
            reassigned stages of Table 15), 'layer' (one warehouse per conv, the paper's
            "within each layer": 11.81M for ResNet18 KW 1x), 'none' (no sharing: each mixture
            uses its own cell; needs b = 1; 11.78M) or 'block' (per residual block, the
            release's ``sharing_range=('conv',)``; 11.82M).
        sharing_dims: 'all' (the paper's: kernels of different dimensions share a warehouse),
            'same' (Table 7's same-dimensioned kernels: one warehouse per conv position, the
            shortcut with the reduce convs; ResNet50 KW 1x 26.95M) or 'exact' (one warehouse
            per exact kernel shape; 26.93M).
        kernel_partition: False makes every cell a whole kernel (Table 5's "without" row);
            needs warehouses of one kernel shape: ``sharing_dims='exact'`` or
            ``sharing='layer'`` / ``'none'``.
        freeze_warehouses: with ``frozen_stages``, also freeze the warehouses of the frozen
            stages (True); False keeps them trainable, as the release's detection fine-tuning.
        **kwargs: the arguments of :class:`DynamicResNet` but ``conv_cfg``.
    """

    def __init__(self,
                 depth: int,
                 budget='1x',
                 reduction: float = 1 / 16,
                 nonlocal_basis_ratio: float = 1.0,
                 attention_init: Optional[str] = 'one_to_one',
                 attention_function: str = 'caf',
                 recompute_kernels: Union[bool, str] = 'auto',
                 sharing: str = 'stage',
                 sharing_dims: str = 'all',
                 kernel_partition: bool = True,
                 freeze_warehouses: bool = True,
                 **kwargs) -> None:
        if 'conv_cfg' in kwargs:
            raise TypeError('KWResNet takes the KW options as arguments (budget=..., ...); use '
                            'DynamicResNet for conv_cfg')
        self.sharing = sharing
        self.sharing_dims = sharing_dims
        super().__init__(depth, conv_cfg=_kw_method_cfg(
            budget, reduction=reduction, nonlocal_basis_ratio=nonlocal_basis_ratio,
            attention_init=attention_init, attention_function=attention_function,
            recompute_kernels=recompute_kernels, sharing=sharing, sharing_dims=sharing_dims,
            kernel_partition=kernel_partition, freeze_warehouses=freeze_warehouses), **kwargs)
        if budget is None:
            self.warehouse_manager = None


@MODELS.register_module()
class KWResNet_CIFAR(KWResNet):
    """KWResNet for small inputs (CIFAR, digits): 3x3 stride-1 stem conv, no max-pool, as
    mmpretrain's ``ResNet_CIFAR``. Same arguments as :class:`KWResNet`; its weights load into
    a ``KWResNet(stem_kernel_size=3)`` (e.g. a detector backbone)."""

    def __init__(self, depth: int, stem_kernel_size: int = 3, stem_stride: int = 1,
                 stem_pool: bool = False, **kwargs) -> None:
        super().__init__(depth, stem_kernel_size=stem_kernel_size, stem_stride=stem_stride,
                         stem_pool=stem_pool, **kwargs)


@MODELS.register_module()
class DynamicResNet_CIFAR(DynamicResNet):
    """:class:`DynamicResNet` for small inputs (3x3 stride-1 stem conv, no max-pool), as
    mmpretrain's ``ResNet_CIFAR``; the demo's small-input variant for every method."""

    def __init__(self, depth: int, stem_kernel_size: int = 3, stem_stride: int = 1,
                 stem_pool: bool = False, **kwargs) -> None:
        super().__init__(depth, stem_kernel_size=stem_kernel_size, stem_stride=stem_stride,
                         stem_pool=stem_pool, **kwargs)


@MODELS.register_module()
class ODConvResNet(DynamicResNet):
    """ResNet with ODConv (ICLR 2022) block convs: ``DynamicResNet`` with
    ``conv_cfg=dict(type='ODConv', kernel_num=kernel_num, ...)``. ``kernel_num`` 4 and 1 are the
    KW paper's ODConv (4x) and ODConv (1x) rows."""

    def __init__(self, depth: int, kernel_num: int = 4, reduction: Optional[float] = None,
                 attention_function: str = 'softmax', **kwargs) -> None:
        cfg = dict(type='ODConv', kernel_num=kernel_num, attention_function=attention_function)
        if reduction is not None:
            cfg['reduction'] = reduction
        super().__init__(depth, conv_cfg=cfg, **kwargs)


@MODELS.register_module()
class DyConvResNet(DynamicResNet):
    """ResNet with DY-Conv (CVPR 2020) convs everywhere but the stem: ``DynamicResNet`` with
    ``conv_cfg=dict(type='DyConv', kernel_num=kernel_num, ...)``."""

    def __init__(self, depth: int, kernel_num: int = 4, reduction: Optional[float] = None,
                 attention_function: str = 'softmax', **kwargs) -> None:
        cfg = dict(type='DyConv', kernel_num=kernel_num, attention_function=attention_function)
        if reduction is not None:
            cfg['reduction'] = reduction
        super().__init__(depth, conv_cfg=cfg, **kwargs)
