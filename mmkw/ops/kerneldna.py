"""KernelDNA child convolutions (Huang et al., *KernelDNA: Dynamic Kernel Sharing via Decoupled
Naive Adapters*, arXiv 2503.23379; the release's math: ``../shared/notes/kerneldna_format.md``).

A *parent* is an ordinary dense conv (``nn.Conv2d``, or an ``nn.Linear`` used as a 1x1 conv) that
also runs at its own place in the network. A *child* (:class:`KDNAChildConv2d`) has no dense
weight of its own: it derives its kernel from the live parent weight at every forward,

    W_child = W_parent * (1 + f) * (1 + s)          (static adapters, both initialised to 0)

with a static filter modulation ``f`` (``[C_out, 1, 1, 1]``) and a static spatial modulation
``s`` (``[1, 1, kh, kw]``, absent for 1x1 children), and gates its *input* per sample and channel
with a squeeze-excitation gate (:class:`KDNAGate`, the dynamic adapter):
``y = conv(x * a(x), W_child)``. So the conv stays one dense conv shared by the batch (no
per-sample kernels), and the parent receives gradients from its own use and from every child.

The static terms of the children of a stage are stored stacked, as the release stores them, in a
:class:`KDNAStaticTerms` (``static_filter_attn [n, C_out, 1, 1, 1]``, ``static_spatial_attn
[n, 1, 1, kh, kw]``): a child reads row ``index``.

**How a child refers to its parent.** The parent conv and the static terms belong to the network
(a stage of a backbone, or the user's model) and are registered there, once. The child holds
both *outside* the module tree (``object.__setattr__``, as ``KWConv2d`` holds its
``WarehouseManager``), so:

- ``state_dict`` has each tensor once, under its owner's name (no aliases to keep in sync), and a
  child's keys are only its gate (``<child>.gate.*``) and its own bias, if any;
- the child reads ``parent.weight`` and the static terms at forward time, so the link survives
  ``load_state_dict`` (in place or with ``assign=True``), ``.to()``/``.half()``, DDP (whose
  parameters are the module tree's) and ``torch.compile`` (traced as attribute reads, no graph
  breaks);
- ``copy.deepcopy`` of a model that contains both the child and its parent maps them together
  (Python's deepcopy memo), so the copy's children derive from the copy's parents. Copying a
  child alone copies its parent with it (the copy computes the same function, detached from the
  original). ``nn.DataParallel`` (single-process replication) is not supported, as for KW.
- Tools that replace the parent module (not just its weight) must call :meth:`set_parent`; fusing
  a parent with its BatchNorm (``fuse_conv_bn``) would change the children too: call
  :func:`fold_static_kernels` first, which freezes each child's kernel.

A child without ``static_terms`` creates and registers its own one-row terms
(``<child>.static_terms.*``), so any conv of a user's network can be made the child of another::

    child = KDNAChildConv2d(64, 64, 3, padding=1, parent=net.conv2)
    # or through mmcv: build_conv_layer(dict(type='KDNAChildConv2d', parent=net.conv2), 64, 64, 3,
    #                                   padding=1)
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmengine.registry import MODELS
from torch.nn.modules.utils import _pair

from .norm_guard import check_norm_batch
from .per_sample_conv import single_pixel_aware_conv2d

IntPair = Union[int, Tuple[int, int]]


class KDNAGate(nn.Module):
    """The dynamic adapter of a child: a squeeze-excitation gate on the child's input.

    ``a(x) = sigmoid(fc2(ReLU(norm(fc1(GAP(x))))))``: ``fc1`` a 1x1 conv ``C -> hidden`` without
    bias, ``norm`` a BatchNorm2d (the release's; any mmcv norm config), ``fc2`` a 1x1 conv
    ``hidden -> C`` with bias. The release uses ``hidden = C // 4``, and ``C // 24`` on the 6x
    expanded channels of MobileNetV2.

    Args:
        channels: C, the channels of the gated input.
        reduction: ``hidden = channels // reduction`` unless ``hidden_channels`` is given.
        hidden_channels: the hidden width, overriding ``reduction``.
        norm_cfg: mmcv norm config of the hidden layer. BatchNorm needs two samples per device in
            training (it normalises one value per sample and channel); ``dict(type='GN',
            num_groups=1)`` works on one sample.

    Forward: ``[B, C, H, W]`` -> gate ``[B, C, 1, 1]`` in (0, 1).
    """

    def __init__(self, channels: int, reduction: int = 4, hidden_channels: Optional[int] = None,
                 norm_cfg: dict = dict(type='BN')) -> None:
        super().__init__()
        hidden = hidden_channels if hidden_channels is not None else channels // reduction
        if hidden < 1:
            raise ValueError(f'KDNAGate: {channels} channels with reduction {reduction} leave no '
                             'hidden channel; lower the reduction or give hidden_channels')
        self.channels = channels
        self.hidden_channels = hidden
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.norm = build_norm_layer(norm_cfg, hidden)[1]
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def reset_parameters(self) -> None:
        """Fresh gate, as torch initialises its layers (the release keeps torch's default for the
        ``fc2`` bias of its ResNet gates)."""
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()
        if hasattr(self.norm, 'reset_parameters'):
            self.norm.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc1(x.mean(dim=(2, 3), keepdim=True))
        check_norm_batch(self.norm, hidden,
                         f'KernelDNA SE gate ({self.channels} -> {self.hidden_channels} channels; '
                         "a gate norm that works on one sample is gate_norm_cfg=dict(type='GN', "
                         "num_groups=1))")
        return torch.sigmoid(self.fc2(self.act(self.norm(hidden))))


class KDNAStaticTerms(nn.Module):
    """The static adapters of ``num_children`` children of the same kernel shape, stacked.

    Parameters (the release's names, initialised to 0 so that every child starts equal to its
    parent): ``static_filter_attn [n, C_out, 1, 1, 1]`` and, when ``kernel_size`` is given,
    ``static_spatial_attn [n, 1, 1, kh, kw]``. The children may have different parents.

    Args:
        num_children: n, the rows.
        out_channels: C_out of the children's kernels.
        kernel_size: ``(kh, kw)`` of a spatial term; None for filter modulation only (the
            release's 1x1 children).
    """

    def __init__(self, num_children: int, out_channels: int,
                 kernel_size: Optional[IntPair] = None) -> None:
        super().__init__()
        if num_children < 1:
            raise ValueError(f'KDNAStaticTerms needs at least one child, got {num_children}')
        self.num_children = num_children
        self.out_channels = out_channels
        self.kernel_size = None if kernel_size is None else _pair(kernel_size)
        self.static_filter_attn = nn.Parameter(torch.zeros(num_children, out_channels, 1, 1, 1))
        if self.kernel_size is None:
            self.register_parameter('static_spatial_attn', None)
        else:
            self.static_spatial_attn = nn.Parameter(
                torch.zeros(num_children, 1, 1, *self.kernel_size))

    def reset_parameters(self) -> None:
        """Static terms 0: every child equal to its parent."""
        nn.init.zeros_(self.static_filter_attn)
        if self.static_spatial_attn is not None:
            nn.init.zeros_(self.static_spatial_attn)

    def derive(self, weight: torch.Tensor, index: int) -> torch.Tensor:
        """Child ``index``'s kernel ``W * (1 + f[index]) * (1 + s[index])`` from a parent kernel
        ``[C_out, C_in / groups, kh, kw]``."""
        kernel = weight * (1 + self.static_filter_attn[index])
        if self.static_spatial_attn is not None:
            kernel = kernel * (1 + self.static_spatial_attn[index])
        return kernel

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # mmengine's non-strict loading only warns about a shape mismatch; a checkpoint with
        # another number of children or channels comes from another layout and must not
        # half-load.
        for name, param in self.named_parameters(recurse=False):
            key = prefix + name
            if key in state_dict and state_dict[key].shape != param.shape:
                raise ValueError(
                    f'KernelDNA static terms {prefix[:-1]!r}: checkpoint {key!r} has shape '
                    f'{list(state_dict[key].shape)} but this stage ({self.num_children} children '
                    f'of {self.out_channels} output channels) needs {list(param.shape)}: the '
                    'checkpoint comes from another architecture or n_kids setting')
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        spatial = '' if self.kernel_size is None else f', spatial={self.kernel_size}'
        return f'children={self.num_children}, out_channels={self.out_channels}{spatial}'


def parent_kernel(parent: nn.Module) -> torch.Tensor:
    """The live kernel of a parent: a conv's weight, or a linear layer's as a 1x1 conv."""
    weight = parent.weight
    return weight[:, :, None, None] if isinstance(parent, nn.Linear) else weight


@MODELS.register_module()
class KDNAChildConv2d(nn.Module):
    """A KernelDNA child conv: its kernel derives from a parent conv, its input is SE-gated.

    ``y = conv(x * gate(x), parent.weight * (1 + f) * (1 + s)) (+ bias)``. The norm after it is
    the caller's (the release gives every child its own BatchNorm). See the module docstring for
    how the parent link is held.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups: as for
            ``nn.Conv2d``; the kernel shape and groups must be the parent's, stride, padding and
            dilation may differ (the release's children all have stride 1, like their
            parents: strided convs are never shared).
        bias: False (the release) or True for a bias of the child's own, initialised to a copy
            of the parent's bias (zeros if it has none).
        parent: the parent, an ``nn.Conv2d`` (or ``nn.Linear``, a 1x1 conv) registered
            elsewhere in the network.
        static_terms: the stacked static terms the child reads row ``index`` of; None creates
            one-row terms owned by the child (``<child>.static_terms``), with a spatial term
            unless ``spatial`` is False or the kernel is 1x1.
        index: the child's row in ``static_terms``.
        spatial: whether own static terms get a spatial term (default: kernel larger than 1x1).
        gate_reduction: hidden width ``in_channels // gate_reduction`` of the SE gate; None
            builds no gate (static adapters only).
        gate_channels: the gate's hidden width, overriding ``gate_reduction``.
        gate_norm_cfg: norm of the gate's hidden layer (BatchNorm, as the release).

    Forward: ``[B, in_channels, H, W]`` -> ``[B, out_channels, H', W']``.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 kernel_size: IntPair,
                 stride: IntPair = 1,
                 padding: IntPair = 0,
                 dilation: IntPair = 1,
                 groups: int = 1,
                 bias: bool = False,
                 *,
                 parent: nn.Module,
                 static_terms: Optional[KDNAStaticTerms] = None,
                 index: int = 0,
                 spatial: Optional[bool] = None,
                 gate_reduction: Optional[int] = 4,
                 gate_channels: Optional[int] = None,
                 gate_norm_cfg: dict = dict(type='BN')) -> None:
        super().__init__()
        if isinstance(padding, str):
            raise ValueError('KDNAChildConv2d: string padding is not supported, give numbers')
        if in_channels % groups or out_channels % groups:
            raise ValueError(f'KDNAChildConv2d: in_channels={in_channels} and out_channels='
                             f'{out_channels} must be divisible by groups={groups}')
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.set_parent(parent)
        if static_terms is None:
            if spatial is None:
                spatial = self.kernel_size != (1, 1)
            self.static_terms = KDNAStaticTerms(1, out_channels,
                                                self.kernel_size if spatial else None)
            index = 0
        else:
            self._check_static_terms(static_terms, index)
            object.__setattr__(self, 'static_terms', static_terms)
        self.index = index
        self.gate = None if gate_reduction is None and gate_channels is None else KDNAGate(
            in_channels, gate_reduction or 1, gate_channels, gate_norm_cfg)
        if bias:
            parent_bias = getattr(parent, 'bias', None)
            self.bias = nn.Parameter(torch.zeros(out_channels) if parent_bias is None
                                     else parent_bias.detach().clone())
        else:
            self.register_parameter('bias', None)
        # the precomputed static kernel of deploy folding (fold()); not part of the state dict
        self.register_buffer('folded_weight', None, persistent=False)

    @property
    def weight_shape(self) -> Tuple[int, ...]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def set_parent(self, parent: nn.Module) -> None:
        """Derive from ``parent`` (checked to have this child's kernel shape) from now on."""
        if not isinstance(parent, (nn.Conv2d, nn.Linear)):
            raise TypeError('KDNAChildConv2d: the parent must be an nn.Conv2d (or an nn.Linear '
                            f'used as a 1x1 conv), got {type(parent).__name__}')
        shape = tuple(parent_kernel(parent).shape)
        if shape != self.weight_shape:
            raise ValueError(f'KDNAChildConv2d: the parent kernel has shape {list(shape)} but '
                             f'this child needs {list(self.weight_shape)} (out, in / groups, kh, '
                             'kw): a child shares its parent\'s kernel shape')
        if isinstance(parent, nn.Conv2d) and parent.groups != self.groups:
            raise ValueError(f'KDNAChildConv2d: the parent has groups={parent.groups}, this '
                             f'child groups={self.groups}')
        # outside the module tree: the parent belongs to the network, not to the child
        object.__setattr__(self, 'parent', parent)

    def _check_static_terms(self, terms: KDNAStaticTerms, index: int) -> None:
        if not isinstance(terms, KDNAStaticTerms):
            raise TypeError(f'static_terms must be a KDNAStaticTerms, got {type(terms).__name__}')
        if not 0 <= index < terms.num_children:
            raise ValueError(f'KDNAChildConv2d: index {index} is outside the static terms of '
                             f'{terms.num_children} children')
        if terms.out_channels != self.out_channels:
            raise ValueError(f'KDNAChildConv2d: the static terms are for {terms.out_channels} '
                             f'output channels, this child has {self.out_channels}')
        if terms.kernel_size is not None and terms.kernel_size != self.kernel_size:
            raise ValueError(f'KDNAChildConv2d: the static spatial term is {terms.kernel_size}, '
                             f'this child\'s kernel {self.kernel_size}')

    def derived_kernel(self) -> torch.Tensor:
        """``W_parent * (1 + f) * (1 + s)``, ``[C_out, C_in / groups, kh, kw]``."""
        return self.static_terms.derive(parent_kernel(self.parent), self.index)

    @property
    def folded(self) -> bool:
        return self.folded_weight is not None

    @torch.no_grad()
    def fold(self) -> None:
        """Deploy folding: compute the static kernel once and use it until :meth:`unfold` (the
        gate stays dynamic). For inference: refold after changing the parent's weights."""
        self.folded_weight = self.derived_kernel().detach().clone()

    def unfold(self) -> None:
        """Derive the kernel from the live parent again at every forward."""
        self.folded_weight = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'KDNAChildConv2d expects input [B, {self.in_channels}, H, W], got '
                             f'{list(x.shape)}')
        if self.folded_weight is not None:
            if self.training and torch.is_grad_enabled():
                raise RuntimeError('KDNAChildConv2d: the static kernel is folded for inference '
                                   '(it would get no gradient): call unfold() / '
                                   'unfold_static_kernels(model) before training')
            kernel = self.folded_weight
        else:
            kernel = self.derived_kernel()
        if self.gate is not None:
            x = x * self.gate(x)
        return single_pixel_aware_conv2d(x, kernel.to(x.dtype), self.bias, self.stride,
                                         self.padding, self.dilation, self.groups)

    def __prepare_scriptable__(self):
        # torch.jit.script calls this before compiling: say what works instead (the parent
        # held outside the module tree is not scriptable)
        from .dynamic_conv import scripting_unsupported
        raise RuntimeError(scripting_unsupported(type(self).__name__))

    def extra_repr(self) -> str:
        s = (f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, '
             f'stride={self.stride}, padding={self.padding}')
        if self.groups != 1:
            s += f', groups={self.groups}'
        if self.dilation != (1, 1):
            s += f', dilation={self.dilation}'
        if self.bias is None:
            s += ', bias=False'
        s += f', parent={type(self.parent).__name__}{list(self.parent.weight.shape)}'
        s += f', index={self.index}'
        return s + (', folded' if self.folded else '')


def fold_static_kernels(model: nn.Module) -> int:
    """Deploy folding of every KernelDNA child in ``model`` (see :meth:`KDNAChildConv2d.fold`):
    outputs stay equal, each child skips the kernel derivation. Returns how many were folded."""
    children = [m for m in model.modules() if isinstance(m, KDNAChildConv2d)]
    for child in children:
        child.fold()
    return len(children)


def unfold_static_kernels(model: nn.Module) -> int:
    """Undo :func:`fold_static_kernels` (needed before training). Returns how many children."""
    children = [m for m in model.modules() if isinstance(m, KDNAChildConv2d)]
    for child in children:
        child.unfold()
    return len(children)


class KDNAStage(nn.Module):
    """A stage of blocks (``'0'``, ``'1'``, ... as in an ``nn.Sequential``) that also owns the
    stacked static terms of its children (e.g. ``statics``), which are not called.

    Indexing, ``len`` and iteration cover the blocks only, so code written for mmpretrain's
    ``nn.Sequential`` stages keeps working.

    Args:
        blocks: the blocks, run in order.
        static_terms: name -> the :class:`KDNAStaticTerms` of the children in ``blocks``.
    """

    def __init__(self, blocks, static_terms: dict) -> None:
        super().__init__()
        self.num_blocks = len(blocks)
        for i, block in enumerate(blocks):
            self.add_module(str(i), block)
        for name, terms in static_terms.items():
            if name.isdigit():
                raise ValueError(f'static terms name {name!r} would shadow a block')
            self.add_module(name, terms)

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, index: int) -> nn.Module:
        return getattr(self, str(range(self.num_blocks)[index]))

    def __iter__(self):
        return (getattr(self, str(i)) for i in range(self.num_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.num_blocks):
            x = getattr(self, str(i))(x)
        return x
