"""Mean learnt attentions of dynamic convs, drawn as heatmaps.

**Kernel Warehouse** (paper Figure 3, A.5, Figures 7-10): one map per warehouse, with one row
per linear mixture of every conv sharing it (in the order the convs were bound, i.e.
``model.modules()`` order) and one column per cell; entry ``(i, j)`` is alpha_ij averaged over
the images seen. At tau = 1 the map is beta without the zero-cell column (the init strategy,
A.2), so drawing it is a check of the strategy. KW*'s extra heads are not drawn.

**Kernel-mixture methods** (ODConv, DY-Conv: a conv with ``kernel_num`` K kernels whose
attention ends with the kernel attention ``[B, K]``): one map per K, one row per conv, one
column per kernel; entry ``(c, k)`` is conv c's attention on kernel k averaged over the images
(softmax rows sum to 1). ODConv's channel, filter and spatial attentions are not drawn.

Other dynamic convs (and kernel-mixture convs with a single kernel) have no map here;
:func:`undrawn_convs` says which. Use :class:`AttentionRecorder` around forward passes, then
:func:`warehouse_maps` and :func:`kernel_maps`; ``tools/analysis/vis_attention.py`` wraps them
around a config, a checkpoint and an image folder.
"""
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from mmkw.ops import DYNAMIC_LAYERS, KW_LAYERS, DynamicConv2d, KWConv2d, WarehouseManager

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.ppm', '.pgm', '.tif', '.tiff', '.webp')


@dataclass
class WarehouseMap:
    """Mean attentions of one warehouse: ``mean`` ``[mt, n]``, ``beta`` ``[mt, n]`` (without
    the zero cell) and the row range ``(name, start, end)`` of each conv."""
    name: str
    mean: np.ndarray
    beta: np.ndarray
    convs: List[Tuple[str, int, int]] = field(default_factory=list)

    @property
    def column_label(self) -> str:
        return f'cell j (n = {self.mean.shape[1]})'

    def beta_argmax_agreement(self) -> float:
        """Fraction of the rows that have a beta cell whose largest mean attention lies on one
        of their beta cells (1.0 for a perfectly kept diagonal under one-to-one)."""
        has_beta = self.beta.sum(axis=1) > 0
        if not has_beta.any():
            return float('nan')
        top = self.mean.argmax(axis=1)
        hits = self.beta[np.arange(len(top)), top] > 0
        return float(hits[has_beta].mean())

    def conv_stats(self) -> List[dict]:
        """Per conv: its rows, the share of its rows whose largest mean attention lies on a
        beta cell, and the mean attention on and off the beta cells (how much of the init
        strategy's pattern the learnt attentions kept)."""
        stats = []
        for name, start, end in self.convs:
            mean, beta = self.mean[start:end], self.beta[start:end] > 0
            top = mean.argmax(axis=1)
            has_beta = beta.any(axis=1)
            hits = beta[np.arange(len(top)), top][has_beta]
            stats.append(dict(
                name=name, rows=[start, end],
                top_on_beta=float(hits.mean()) if hits.size else float('nan'),
                mean_on_beta=float(mean[beta].mean()) if beta.any() else float('nan'),
                mean_off_beta=float(mean[~beta].mean()) if (~beta).any() else float('nan')))
        return stats


@dataclass
class KernelMap:
    """Mean kernel attentions of the kernel-mixture convs with K kernels: ``mean`` ``[convs,
    K]``, one row per conv (``convs``: ``(name, row, row + 1)``), in ``model.modules()``
    order."""
    name: str
    mean: np.ndarray
    convs: List[Tuple[str, int, int]] = field(default_factory=list)
    layer_types: List[str] = field(default_factory=list)

    @property
    def column_label(self) -> str:
        return f'kernel k (K = {self.mean.shape[1]})'

    def conv_stats(self) -> List[dict]:
        """Per conv: its row, layer type, mean attention per kernel and the kernel with the
        largest one."""
        return [dict(name=name, row=start, type=layer_type,
                     mean=[float(v) for v in self.mean[start]],
                     top_kernel=int(self.mean[start].argmax()))
                for (name, start, _), layer_type in zip(self.convs, self.layer_types)]


class AttentionRecorder:
    """Records what every :class:`~mmkw.ops.DynamicConv2d` of ``model`` computes in
    :meth:`~mmkw.ops.DynamicConv2d.attend`: for each of its attention tensors ``[B, ...]`` the
    sum over the batch (in float64), and the number of samples.

    The recording wraps each conv's ``attend`` (an instance attribute, removed again), which
    sees every method's attentions whichever of its attention module's methods computes them
    (KW* calls ``forward_with_heads``, which forward hooks would miss). Use as a context
    manager or call :meth:`remove`.
    """

    def __init__(self, model: nn.Module) -> None:
        self.sums: Dict[int, List[torch.Tensor]] = {}
        self.counts: Dict[int, int] = {}
        self._convs: List[DynamicConv2d] = []
        for module in model.modules():  # modules() yields each module once
            if isinstance(module, DYNAMIC_LAYERS):
                self._wrap(module)
        if not self._convs:
            raise ValueError('the model has no dynamic layer (mmkw.ops.DYNAMIC_LAYERS: '
                             'DynamicConv2d, KWLinear) whose attentions could be recorded')

    def _wrap(self, conv: DynamicConv2d) -> None:
        attend = conv.attend

        def recording_attend(x: torch.Tensor):
            attention = attend(x)
            self._record(conv, attention)
            return attention

        conv.attend = recording_attend
        self._convs.append(conv)

    def _record(self, conv: DynamicConv2d, attention) -> None:
        key = id(conv)
        batch_sums = [a.detach().to(torch.float64).sum(dim=0).cpu() for a in attention]
        if key in self.sums:
            self.sums[key] = [s + b for s, b in zip(self.sums[key], batch_sums)]
        else:
            self.sums[key] = batch_sums
        self.counts[key] = self.counts.get(key, 0) + attention[0].shape[0]

    def means(self, conv: DynamicConv2d) -> Optional[Tuple[np.ndarray, ...]]:
        """Mean of each attention tensor of ``conv`` over the samples (None if it never
        ran)."""
        key = id(conv)
        if key not in self.sums:
            return None
        return tuple((s / self.counts[key]).numpy() for s in self.sums[key])

    def mean(self, conv: DynamicConv2d) -> Optional[np.ndarray]:
        """Mean of the first attention tensor of ``conv`` (KW: alpha ``[m, n]``)."""
        means = self.means(conv)
        return None if means is None else means[0]

    def remove(self) -> None:
        for conv in self._convs:
            if 'attend' in conv.__dict__:
                del conv.attend
        self._convs = []

    def __enter__(self) -> 'AttentionRecorder':
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _manager_prefixes(model: nn.Module) -> Dict[int, str]:
    """A file-name prefix per warehouse manager: none when the model has one manager, else its
    owner's path (``backbone.``, ``head.``)."""
    managers = [(name, m) for name, m in model.named_modules() if isinstance(m, WarehouseManager)]
    if len(managers) <= 1:
        return {id(m): '' for _, m in managers}
    prefixes = {}
    for name, manager in managers:
        owner = name.rsplit('.', 1)[0] if '.' in name else name
        prefixes[id(manager)] = f'{owner}.' if owner else ''
    return prefixes


def warehouse_maps(model: nn.Module, recorder: AttentionRecorder) -> List[WarehouseMap]:
    """Stack the recorded mean attentions per warehouse (rows: the mixtures of all convs sharing
    it, in bind order; columns: cells). Warehouses no recorded conv used are skipped."""
    prefixes = _manager_prefixes(model)
    groups: Dict[Tuple[int, int], List[Tuple[str, KWConv2d]]] = {}
    managers: Dict[int, WarehouseManager] = {}
    for name, module in model.named_modules():
        if isinstance(module, KW_LAYERS) and module.attention is not None:
            manager = module.warehouse_manager
            managers[id(manager)] = manager
            groups.setdefault((id(manager), module.warehouse_index), []).append((name, module))
    maps = []
    for (manager_id, index), convs in groups.items():
        manager = managers[manager_id]
        spec_name = list(manager.specs)[index]
        rows, betas, ranges, start = [], [], [], 0
        for name, conv in convs:
            mean = recorder.mean(conv)
            if mean is None:
                break
            rows.append(mean)
            betas.append(conv.attention.beta[:, :-1].detach().cpu().double().numpy())
            ranges.append((name, start, start + mean.shape[0]))
            start += mean.shape[0]
        else:
            maps.append(WarehouseMap(prefixes.get(manager_id, '') + spec_name,
                                     np.concatenate(rows), np.concatenate(betas), ranges))
    return maps


def kernel_attention_index(conv: DynamicConv2d) -> Optional[int]:
    """Where the kernel attention ``[B, K]`` is among the tensors ``conv.attend`` returns: the
    last one, for convs with ``kernel_num`` K > 1 whose attention has a kernel head (ODConv's
    ``has_kernel``; DY-Conv always). None for convs without one."""
    kernel_num = getattr(conv, 'kernel_num', None)
    if not isinstance(kernel_num, int) or kernel_num < 2 or isinstance(conv, KWConv2d):
        return None
    if getattr(getattr(conv, 'attention', None), 'has_kernel', True) is False:
        return None
    return -1


def kernel_maps(model: nn.Module, recorder: AttentionRecorder) -> List[KernelMap]:
    """The mean kernel attentions of the kernel-mixture convs (ODConv, DY-Conv), one map per
    K: rows are the convs that ran (``model.named_modules()`` order), columns their kernels.

    Named ``kernel_attention`` (``kernel_attention_K{K}`` when convs of several K exist).
    """
    groups: Dict[int, List[Tuple[str, DynamicConv2d, np.ndarray]]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, DynamicConv2d):
            continue
        index = kernel_attention_index(module)
        means = recorder.means(module)
        if index is None or means is None:
            continue
        kernel = means[index]
        if kernel.shape != (module.kernel_num, ):
            raise ValueError(
                f'{type(module).__name__} {name!r}: expected its last attention to be the '
                f'kernel attention [B, {module.kernel_num}], got per-sample shape '
                f'{list(kernel.shape)}; kernel_maps needs the method to return it last')
        groups.setdefault(module.kernel_num, []).append((name, module, kernel))
    maps = []
    for kernel_num, convs in groups.items():
        name = 'kernel_attention' if len(groups) == 1 else f'kernel_attention_K{kernel_num}'
        maps.append(KernelMap(name, np.stack([kernel for _, _, kernel in convs]),
                              [(conv_name, i, i + 1) for i, (conv_name, _, _)
                               in enumerate(convs)],
                              [type(conv).__name__ for _, conv, _ in convs]))
    return maps


def undrawn_convs(model: nn.Module, recorder: AttentionRecorder) -> List[str]:
    """What :func:`warehouse_maps` and :func:`kernel_maps` do not draw, as sentences: dynamic
    convs of methods without a map here, kernel-mixture convs with a single kernel, ODConv's
    other attentions, KW*'s extra heads, and convs that never ran."""
    no_map: Dict[str, int] = {}
    single_kernel: Dict[str, int] = {}
    not_run: Dict[str, int] = {}
    other_heads: Dict[str, int] = {}
    for module in model.modules():
        if not isinstance(module, DYNAMIC_LAYERS):
            continue
        layer = type(module).__name__
        means = recorder.means(module)
        if means is None:
            not_run[layer] = not_run.get(layer, 0) + 1
        elif isinstance(module, KW_LAYERS):
            if len(means) > 1:
                other_heads[layer] = other_heads.get(layer, 0) + 1
        elif kernel_attention_index(module) is not None:
            if len(means) > 1:
                other_heads[layer] = other_heads.get(layer, 0) + 1
        elif isinstance(getattr(module, 'kernel_num', None), int):
            single_kernel[layer] = single_kernel.get(layer, 0) + 1
        else:
            no_map[layer] = no_map.get(layer, 0) + 1
    notes = []
    for layer, count in no_map.items():
        notes.append(f'{count} {layer} convs: no attention map for this method (maps exist '
                     'for KW warehouses and for the kernel attentions of kernel-mixture '
                     'methods such as ODConv and DY-Conv); nothing drawn for them')
    for layer, count in single_kernel.items():
        notes.append(f'{count} {layer} convs have a single kernel (K = 1), so no kernel '
                     'attention: nothing drawn for them')
    for layer, count in other_heads.items():
        what = ('channel, filter and kernel-position heads (KW*)' if layer == 'KWConv2d'
                else 'attentions other than the kernel attention (ODConv: channel, filter, '
                'spatial)')
        notes.append(f'{count} {layer} convs: their {what} are not drawn')
    for layer, count in not_run.items():
        notes.append(f'{count} {layer} convs did not run in the forward passes: not drawn')
    return notes


def figure_size(rows: int, cols: int, row_inches: float = 0.06) -> Tuple[float, float]:
    """Figure size in inches of a ``rows x cols`` heatmap: about 6 px per entry
    (``row_inches`` per row), between 3 and 13 inches a side, plus room for the labels and the
    colour bar. Deterministic, so the PNG size (at :data:`DPI`) is known from the map shape."""
    width = min(max(cols * 0.06, 3.0), 13.0) + 3.0
    height = min(max(rows * row_inches, 3.0), 13.0) + 1.5
    return width, height


DPI = 100
# a kernel map has a labelled row per conv: tall enough to read every label
KERNEL_MAP_ROW_INCHES = 0.14


def png_size(rows: int, cols: int, row_inches: float = 0.06) -> Tuple[int, int]:
    """Pixel size ``(width, height)`` of the PNG written for a ``rows x cols`` map."""
    width, height = figure_size(rows, cols, row_inches)
    return int(round(width * DPI)), int(round(height * DPI))


def save_heatmap(wmap, path: Path, title: str = '', row_inches: float = 0.06) -> None:
    """Draw ``wmap.mean`` (a :class:`WarehouseMap` or :class:`KernelMap`) as a heatmap with
    the row ranges of the convs marked, to ``path`` (PNG). Colours are diverging and centred at
    0 for warehouse maps and wherever a mean is negative (CAF attentions can be), else (softmax
    kernel attentions) sequential from 0."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows, cols = wmap.mean.shape
    fig = plt.figure(figsize=figure_size(rows, cols, row_inches), dpi=DPI)
    # fixed axes positions (no tight bbox), so the PNG size only depends on the map shape
    width, height = figure_size(rows, cols, row_inches)
    left, right = 2.0 / width, 1.0 - 1.0 / width
    bottom, top = 0.6 / height, 1.0 - 0.8 / height
    ax = fig.add_axes([left, bottom, right - left - 0.4 / width, top - bottom])
    cax = fig.add_axes([right - 0.25 / width, bottom, 0.15 / width, top - bottom])
    limit = float(np.abs(wmap.mean).max()) or 1.0
    if isinstance(wmap, WarehouseMap) or (wmap.mean < 0).any():
        colours = dict(cmap='RdBu_r', vmin=-limit, vmax=limit)
    else:
        colours = dict(cmap='viridis', vmin=0.0, vmax=limit)
    image = ax.imshow(wmap.mean, aspect='auto', interpolation='nearest', **colours)
    fig.colorbar(image, cax=cax)
    for _, start, _ in wmap.convs[1:]:
        if isinstance(wmap, WarehouseMap):  # a kernel map has one row per conv: no lines
            ax.axhline(start - 0.5, color='black', linewidth=0.5)
    ax.set_yticks([(s + e - 1) / 2 for _, s, e in wmap.convs])
    labels = [name for name, _, _ in wmap.convs]
    # drop a shared owner prefix such as 'backbone.' (only the first name component: the
    # layer names after it tell the convs of a stage apart)
    common = os.path.commonprefix(labels) if len(labels) > 1 else ''
    common = common[:common.find('.') + 1]
    ax.set_yticklabels([label[len(common):] for label in labels], fontsize=6)
    if cols <= 16:
        ax.set_xticks(range(cols))
    ax.set_xlabel(wmap.column_label)
    ax.set_title(title or wmap.name, fontsize=9)
    fig.savefig(str(path), dpi=DPI)
    plt.close(fig)


def find_images(root: str) -> List[Path]:
    """Images under an ImageNet-layout folder: ``root/val`` if present, else ``root/train``,
    else ``root`` itself (class sub-folders or a flat folder), sorted."""
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f'image folder {root!r} does not exist')
    for split in ('val', 'train'):
        if (base / split).is_dir():
            base = base / split
            break
    images = sorted(p for p in base.rglob('*') if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise FileNotFoundError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) under {base}')
    return images


def batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
