"""Key names and shapes of the official Kernel Warehouse checkpoints, written from the release's
facts (``../shared/notes/official_kw_format.md`` and the release's model definitions in
OSVAI/KernelWarehouse) without any mmkw code, so that the converter is tested against an
independent description of the official layout.

:class:`OfficialLayout` replays what the release's ``Warehouse_Manager`` does: convs *reserve* a
place in a warehouse named ``stage{s}_layer{l}_{conv}``, the name is fused by ``sharing_range``
(a part that starts with a sharing name becomes that name), warehouses are numbered in order of
first reservation, cells are the gcd of the channels times the cell ratios, ``n = int(mt * b)``,
and every KW conv gets an ``attention`` (``fc1``, ``norm1``, ``fc2`` or, with a nonlocal basis,
``fc2``, ``fc3``, ``basis_bias``). The family builders follow the release's ``kw_resnet.py``,
``kw_mobilenetv2.py``, ``kw1d2x_mobilenetv2.py``, ``kw_convnext.py``, their plain counterparts
and the detection backbones.
"""
import math
from collections import OrderedDict
from functools import reduce
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

Shape = Tuple[int, ...]
Ratio = Union[float, Sequence[float]]

BUFFERS = ('running_mean', 'running_var', 'num_batches_tracked')


class OfficialLayout:
    """Records the modules of an official network in construction order."""

    def __init__(self, reduction: Ratio = 1 / 16, cell_num_ratio: Ratio = 1,
                 cell_inplane_ratio: Ratio = 1, cell_outplane_ratio: Ratio = 1,
                 sharing_range: Sequence[str] = (), nonlocal_basis_ratio: float = 1.0,
                 attention_norm: str = 'BN', kw: bool = True) -> None:
        self.ratios = dict(reduction=reduction, num=cell_num_ratio, inp=cell_inplane_ratio,
                           out=cell_outplane_ratio)
        self.sharing_range = tuple(sharing_range)
        self.nonlocal_basis_ratio = nonlocal_basis_ratio
        self.attention_norm = attention_norm
        self.kw = kw
        self.entries: List[tuple] = []  # ('param', key, shape) or ('kw', conv dict)
        self.warehouses: 'OrderedDict[str, List[Shape]]' = OrderedDict()

    # ------------------------------------------------------------------ modules
    def fuse(self, name: str) -> str:
        parts = []
        for part in name.split('_'):
            for sharing in self.sharing_range:
                if part.startswith(sharing):
                    part = sharing
            parts.append(part)
        return '_'.join(parts)

    def param(self, key: str, shape: Shape) -> None:
        self.entries.append(('param', key, tuple(shape)))

    def conv(self, path: str, cin: int, cout: int, k: int, groups: int = 1, bias: bool = False,
             warehouse: Optional[str] = None, enabled: bool = True, dim: int = 2) -> None:
        kernel = (cout, cin // groups) + (k, ) * dim
        if not (self.kw and enabled and warehouse is not None):
            self.param(f'{path}.weight', kernel)
            if bias:
                self.param(f'{path}.bias', (cout, ))
            return
        name = self.fuse(warehouse)
        self.warehouses.setdefault(name, []).append(kernel)
        if bias:
            self.param(f'{path}.bias', (cout, ))
        index = list(self.warehouses).index(name)  # warehouses count in order of first use
        self.entries.append(('kw', dict(path=path, cin=cin, cout=cout, kernel=kernel,
                                        groups=groups, warehouse=index)))

    def bn(self, path: str, channels: int) -> None:
        for name in ('weight', 'bias', 'running_mean', 'running_var'):
            self.param(f'{path}.{name}', (channels, ))
        self.param(f'{path}.num_batches_tracked', ())

    def ln(self, path: str, channels: int) -> None:
        self.param(f'{path}.weight', (channels, ))
        self.param(f'{path}.bias', (channels, ))

    def linear(self, path: str, cin: int, cout: int, bias: bool = True) -> None:
        self.param(f'{path}.weight', (cout, cin))
        if bias:
            self.param(f'{path}.bias', (cout, ))

    # ------------------------------------------------------------------ state dict
    def _ratio(self, name: str, index: int) -> float:
        value = self.ratios[name]
        return value[index] if isinstance(value, (tuple, list)) else value

    def cells(self) -> List[Shape]:
        """Warehouse shapes ``[n, cell_out, cell_in, 1, ...]`` in order of first reservation."""
        shapes = []
        for index, kernels in enumerate(self.warehouses.values()):
            out_gcd = reduce(math.gcd, (k[0] for k in kernels))
            in_gcd = reduce(math.gcd, (k[1] for k in kernels))
            cell_in = max(int(in_gcd * self._ratio('inp', index)), 1)
            cell_out = max(int(out_gcd * self._ratio('out', index)), 1)
            total = sum(int(k[0] // cell_out * k[1] // cell_in) * math.prod(k[2:])
                        for k in kernels)
            n = max(int(total * self._ratio('num', index)), 1)
            shapes.append((n, cell_out, cell_in) + (1, ) * (len(kernels[0]) - 2))
        return shapes

    def _attention(self, conv: dict, cells: List[Shape]) -> List[Tuple[str, Shape]]:
        index = conv['warehouse']
        n, cell_out, cell_in = cells[index][:3]
        m = (conv['cout'] // cell_out) * (conv['cin'] // cell_in // conv['groups']) * \
            math.prod(conv['kernel'][2:])
        hidden = max(int(conv['cin'] * self._ratio('reduction', index)), 16)
        prefix = f"{conv['path']}.attention"
        keys = [(f'{prefix}.fc1.weight', (hidden, conv['cin']))]
        if self.attention_norm == 'LN':
            keys += [(f'{prefix}.fc1.bias', (hidden, )), (f'{prefix}.norm1.weight', (hidden, )),
                     (f'{prefix}.norm1.bias', (hidden, ))]
        else:
            keys += [(f'{prefix}.norm1.{name}', (hidden, ))
                     for name in ('weight', 'bias', 'running_mean', 'running_var')]
            keys.append((f'{prefix}.norm1.num_batches_tracked', ()))
        if self.nonlocal_basis_ratio >= 1:
            keys += [(f'{prefix}.fc2.weight', (m * (n + 1), hidden)),
                     (f'{prefix}.fc2.bias', (m * (n + 1), ))]
        else:
            local = int(self._ratio('num', index) * m)
            nonlocal_ = n - local
            basis = max(int(nonlocal_ * self.nonlocal_basis_ratio), 16)
            keys += [(f'{prefix}.fc2.weight', ((local + basis + 1) * m, hidden)),
                     (f'{prefix}.fc3.weight', (nonlocal_, basis)),
                     (f'{prefix}.basis_bias', (m * (n + 1), ))]
        return keys

    def shapes(self, prefix: str = '') -> 'OrderedDict[str, Shape]':
        """Every state-dict key with its shape (the warehouse manager is registered first)."""
        cells = self.cells()
        out: 'OrderedDict[str, Shape]' = OrderedDict(
            (f'{prefix}warehouse_manager.weights.{i}', shape) for i, shape in enumerate(cells))
        for entry in self.entries:
            if entry[0] == 'param':
                out[prefix + entry[1]] = entry[2]
            else:
                out.update((prefix + k, s) for k, s in self._attention(entry[1], cells))
        return out

    def num_params(self) -> int:
        return sum(math.prod(s) for k, s in self.shapes().items()
                   if k.rsplit('.', 1)[-1] not in BUFFERS)


def random_state_dict(shapes: Dict[str, Shape], seed: int = 0) -> 'OrderedDict[str, torch.Tensor]':
    """Random values under the official names (positive running variances, integer counters)."""
    gen = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for key, shape in shapes.items():
        if key.endswith('num_batches_tracked'):
            state[key] = torch.tensor(1000, dtype=torch.long)
        elif key.endswith('running_var'):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.empty(shape).normal_(0, 0.1, generator=gen)
    return state


# ---------------------------------------------------------------------- the release's budgets
BUDGET_RATIOS = {  # (cell_num_ratio, cell_inplane_ratio, cell_outplane_ratio)
    '1/4x': (0.25, 0.5, 0.5), '1/2x': (0.5, 0.5, 0.5), '1x': (1, 1, 1), '2x': (2, 1, 1),
    '4x': (4, 1, 1)}


def _layout(budget: Optional[str], **kwargs) -> OfficialLayout:
    if budget is None:
        return OfficialLayout(kw=False, **kwargs)
    num, inp, out = BUDGET_RATIOS[budget]
    return OfficialLayout(cell_num_ratio=num, cell_inplane_ratio=inp, cell_outplane_ratio=out,
                          **kwargs)


def resnet(depth: int, budget: Optional[str], nonlocal_basis_ratio: float = 1.0,
           num_classes: int = 1000) -> OfficialLayout:
    """``kw_resnet18/50`` (``models/kw_resnet.py``; budget None: ``models/resnet.py``). The
    detection backbone (``detection/.../kw_resnet.py``) has the same keys, ``fc`` included."""
    bottleneck = depth >= 50
    blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}[depth]
    expansion = 4 if bottleneck else 1
    net = _layout(budget, sharing_range=('layer', 'conv'),
                  nonlocal_basis_ratio=nonlocal_basis_ratio)
    net.conv('conv1', 3, 64, 7)  # the stem is a normal conv
    net.bn('bn1', 64)
    inplanes, layer_idx = 64, 0
    for stage, (planes, num_blocks, stride) in enumerate(zip((64, 128, 256, 512), blocks,
                                                             (1, 2, 2, 2))):
        downsample = stride != 1 or inplanes != planes * expansion
        if downsample:  # reserved before the blocks; a KW conv only when strided
            net.conv(f'layer{stage + 1}.0.downsample.0', inplanes, planes * expansion, 1,
                     warehouse=f'stage{stage - 1}_layer{layer_idx + 1}_conv0',
                     enabled=stride != 1)
            net.bn(f'layer{stage + 1}.0.downsample.1', planes * expansion)
        for block in range(num_blocks):
            handover = block == 0  # the first block's conv1 joins the previous stage
            path = f'layer{stage + 1}.{block}'
            width_in = inplanes if block == 0 else planes * expansion
            li = 0 if handover else layer_idx
            if bottleneck:
                first = stage - 1 if handover else stage
                net.conv(f'{path}.conv1', width_in, planes, 1,
                         warehouse=f'stage{first}_layer{layer_idx}_conv0', enabled=first >= 0)
                net.bn(f'{path}.bn1', planes)
                net.conv(f'{path}.conv2', planes, planes, 3,
                         warehouse=f'stage{stage}_layer{li}_conv1')
                net.bn(f'{path}.bn2', planes)
                net.conv(f'{path}.conv3', planes, planes * 4, 1,
                         warehouse=f'stage{stage}_layer{li}_conv2')
                net.bn(f'{path}.bn3', planes * 4)
            else:
                first = max(stage - 1 if handover else stage, 0)
                net.conv(f'{path}.conv1', width_in, planes, 3,
                         warehouse=f'stage{first}_layer{layer_idx}_conv0')
                net.bn(f'{path}.bn1', planes)
                net.conv(f'{path}.conv2', planes, planes, 3,
                         warehouse=f'stage{stage}_layer{li}_conv1')
                net.bn(f'{path}.bn2', planes)
            layer_idx = 1 if block == 0 else layer_idx + 1
        inplanes = planes * expansion
    net.linear('fc', 512 * expansion, num_classes)
    return net


def _make_divisible(value: float, divisor: int = 8) -> int:
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


MNV2_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                 (6, 160, 3, 2), (6, 320, 1, 1)]
MNV2_KW_STAGES = [1, 2, 3, 4, 5, 6, 6]


def mobilenet_v2(width: float, budget: Optional[str], num_classes: int = 1000,
                 detection: bool = False) -> OfficialLayout:
    """``kw_mobilenetv2_*`` (1x: sharing ('layer', 'pwconv'); 4x: ('layer',)),
    ``kw1d2x_mobilenetv2_*`` (per-warehouse ratios, KW pointwise convs in the last stage only,
    a ``KWLinear`` classifier), plain ``mobilenetv2_*``; ``detection``: the detection backbone
    (the KW one has an ``nn.Linear`` classifier)."""
    half = budget == '1/2x'
    if budget is None:
        net = OfficialLayout(kw=False)
    elif half:
        net = OfficialLayout(reduction=1 / 32,
                             cell_num_ratio=(1, 1, 1, 1, 1, 1, 0.5, 1, 0.5, 0.5),
                             cell_inplane_ratio=(1, 1, 1, 1, 1, 1, 0.5, 1, 0.5, 0.025),
                             cell_outplane_ratio=(1, 1, 1, 1, 1, 1, 0.5, 1, 0.5, 1),
                             sharing_range=tuple('layer'))  # the release's tuple of letters
    else:
        net = _layout(budget, sharing_range=('layer', 'pwconv') if budget == '1x' else ('layer', ))
    pw_enabled = [False, False, False, False, False, True, True] if half else [True] * 7

    def conv_bn_relu(path, cin, cout, k, groups=1, warehouse=None, enabled=True):
        net.conv(f'{path}.0', cin, cout, k, groups=groups, warehouse=warehouse, enabled=enabled)
        net.bn(f'{path}.1', cout)

    channels = _make_divisible(32 * width)
    last = _make_divisible(1280 * max(1.0, width))
    conv_bn_relu('features.0', 3, channels, 3, warehouse='stage0_conv0')
    feature, layer_idx = 1, 0
    for idx, (t, c, n, s) in enumerate(MNV2_SETTINGS):
        out = _make_divisible(c * width)
        for i in range(n):
            handover = i == 0 and idx > 0 and MNV2_KW_STAGES[idx] != MNV2_KW_STAGES[idx - 1]
            stage = MNV2_KW_STAGES[idx] - 1 if handover else MNV2_KW_STAGES[idx]
            enabled = pw_enabled[stage - 1]
            hidden = int(round(channels * t))
            path = f'features.{feature}.conv'
            unit = 0
            if t != 1:
                conv_bn_relu(f'{path}.0', channels, hidden, 1, enabled=enabled,
                             warehouse=f'stage{stage}_layer{layer_idx}_pwconv0')
                unit = 1
            conv_bn_relu(f'{path}.{unit}', hidden, hidden, 3, groups=hidden,
                         warehouse=f'stage{stage}_layer{layer_idx}_dwconv0')
            net.conv(f'{path}.{unit + 1}', hidden, out, 1, enabled=enabled,
                     warehouse=f'stage{stage}_layer{layer_idx}_pwconv1')
            net.bn(f'{path}.{unit + 2}', out)
            channels = out
            layer_idx = 0 if handover else layer_idx + 1
            feature += 1
    conv_bn_relu(f'features.{feature}', channels, last, 1,
                 warehouse=f'stage{MNV2_KW_STAGES[-1]}_layer{layer_idx}_pwconv1')
    if budget is None:  # Sequential(Dropout, Linear), in the detection backbone too
        net.linear('classifier.1', last, num_classes)
    elif half and not detection:
        # KWLinear wraps a 1-D KW conv as .conv; its warehouse 'classifier' comes last
        net.conv('classifier.1.conv', last, num_classes, 1, bias=True, warehouse='classifier',
                 dim=1)
    else:
        net.linear('classifier', last, num_classes)
    return net


def convnext(budget: Optional[str], depths=(3, 3, 9, 3), dims=(96, 192, 384, 768),
             num_classes: int = 1000, detection: bool = False) -> OfficialLayout:
    """``kw_convnext_tiny`` (every conv a KW conv with a bias, LayerNorm attentions, gamma
    ``[1, C, 1, 1]``), plain ``convnext_tiny`` (facebookresearch: Linear pointwise convs, gamma
    ``[C]``); ``detection``: per-stage norms ``norm0..3`` instead of ``norm`` and ``head``."""
    kw = budget is not None
    net = _layout(budget, sharing_range=('layer', 'pwconv'), attention_norm='LN')
    net.conv('downsample_layers.0.0', 3, dims[0], 4, bias=True, warehouse='stagestem_conv0')
    net.ln('downsample_layers.0.1', dims[0])
    for i in range(3):
        net.ln(f'downsample_layers.{i + 1}.0', dims[i])
        net.conv(f'downsample_layers.{i + 1}.1', dims[i], dims[i + 1], 2, bias=True,
                 warehouse=f'stage{i}_layerds_conv0')
    for i, (depth, dim) in enumerate(zip(depths, dims)):
        for j in range(depth):
            path = f'stages.{i}.{j}'
            net.conv(f'{path}.dwconv', dim, dim, 7, groups=dim, bias=True,
                     warehouse=f'stage{i}_layer{j}_dwconv0')
            net.ln(f'{path}.norm', dim)
            if kw:
                net.conv(f'{path}.pwconv1', dim, 4 * dim, 1, bias=True,
                         warehouse=f'stage{i}_layer{j}_pwconv1')
                net.conv(f'{path}.pwconv2', 4 * dim, dim, 1, bias=True,
                         warehouse=f'stage{i}_layer{j}_pwconv2')
                net.param(f'{path}.gamma', (1, dim, 1, 1))
            else:
                net.linear(f'{path}.pwconv1', dim, 4 * dim)
                net.linear(f'{path}.pwconv2', 4 * dim, dim)
                net.param(f'{path}.gamma', (dim, ))
    if detection:
        for i, dim in enumerate(dims):
            net.ln(f'norm{i}', dim)
    else:
        net.ln('norm', dims[-1])
        net.linear('head', dims[-1], num_classes)
    return net


def released_layout(arch: str, budget: Optional[str], detection: bool = False) -> OfficialLayout:
    """The layout of a released model (``arch``: the converter's names)."""
    if arch.startswith('resnet'):
        ratio = 1 / 16 if (arch, budget) == ('resnet50', '1/2x') else 1.0
        return resnet(int(arch[len('resnet'):]), budget, nonlocal_basis_ratio=ratio)
    if arch.startswith('mobilenetv2'):
        return mobilenet_v2(int(arch.rsplit('_', 1)[1]) / 100, budget, detection=detection)
    return convnext(budget, detection=detection)
