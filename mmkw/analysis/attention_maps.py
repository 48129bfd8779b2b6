"""Mean learnt attentions per warehouse, as the paper draws them (Figure 3, A.5, Figures 7-10).

For every warehouse the map has one row per linear mixture of every conv sharing it (in the
order the convs were bound, i.e. ``model.modules()`` order) and one column per cell; entry
``(i, j)`` is alpha_ij averaged over the images seen. At tau = 1 the map is beta without the
zero-cell column (the init strategy, A.2), so drawing it is a check of the strategy.

Use :class:`AttentionRecorder` around forward passes, then :func:`warehouse_maps`; the tool
``tools/analysis/vis_attention.py`` wraps both around a config, a checkpoint and an image folder.
"""
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from mmkw.ops import KWAttention, KWConv2d, WarehouseManager

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.ppm', '.pgm', '.tif', '.tiff', '.webp')


@dataclass
class WarehouseMap:
    """Mean attentions of one warehouse: ``mean`` ``[mt, n]``, ``beta`` ``[mt, n]`` (without
    the zero cell) and the row range ``(name, start, end)`` of each conv."""
    name: str
    mean: np.ndarray
    beta: np.ndarray
    convs: List[Tuple[str, int, int]] = field(default_factory=list)

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


class AttentionRecorder:
    """Forward hooks on every :class:`KWAttention` of ``model`` that sum its attentions
    ``[B, m, n]`` over the batch (in float64) and count the samples.

    Use as a context manager (the hooks are removed on exit) or call :meth:`remove`.
    """

    def __init__(self, model: nn.Module) -> None:
        self.sums: Dict[int, torch.Tensor] = {}
        self.counts: Dict[int, int] = {}
        self._handles = []
        for module in model.modules():
            if isinstance(module, KWAttention):
                self._handles.append(module.register_forward_hook(self._hook))
        if not self._handles:
            raise ValueError('the model has no KW attention to record (no KWConv2d bound to a '
                             'warehouse)')

    def _hook(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        key = id(module)
        batch_sum = output.detach().to(torch.float64).sum(dim=0).cpu()
        if key in self.sums:
            self.sums[key] += batch_sum
        else:
            self.sums[key] = batch_sum
        self.counts[key] = self.counts.get(key, 0) + output.shape[0]

    def mean(self, attention: KWAttention) -> Optional[np.ndarray]:
        """Mean attention ``[m, n]`` of one attention module (None if it never ran)."""
        key = id(attention)
        if key not in self.sums:
            return None
        return (self.sums[key] / self.counts[key]).numpy()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

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
        if isinstance(module, KWConv2d) and module.attention is not None:
            manager = module.warehouse_manager
            managers[id(manager)] = manager
            groups.setdefault((id(manager), module.warehouse_index), []).append((name, module))
    maps = []
    for (manager_id, index), convs in groups.items():
        manager = managers[manager_id]
        spec_name = list(manager.specs)[index]
        rows, betas, ranges, start = [], [], [], 0
        for name, conv in convs:
            mean = recorder.mean(conv.attention)
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


def figure_size(rows: int, cols: int) -> Tuple[float, float]:
    """Figure size in inches of a ``rows x cols`` heatmap: about 6 px per entry, between 5 and
    16 inches a side, plus room for the labels and the colour bar. Deterministic, so the PNG
    size (at :data:`DPI`) is known from the map shape."""
    width = min(max(cols * 0.06, 3.0), 13.0) + 3.0
    height = min(max(rows * 0.06, 3.0), 13.0) + 1.5
    return width, height


DPI = 100


def png_size(rows: int, cols: int) -> Tuple[int, int]:
    """Pixel size ``(width, height)`` of the PNG written for a ``rows x cols`` map."""
    width, height = figure_size(rows, cols)
    return int(round(width * DPI)), int(round(height * DPI))


def save_heatmap(wmap: WarehouseMap, path: Path, title: str = '') -> None:
    """Draw ``wmap.mean`` as a heatmap (diverging colours centred at 0: CAF attentions can be
    negative) with the row ranges of the convs marked, to ``path`` (PNG)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows, cols = wmap.mean.shape
    fig = plt.figure(figsize=figure_size(rows, cols), dpi=DPI)
    # fixed axes positions (no tight bbox), so the PNG size only depends on the map shape
    width, height = figure_size(rows, cols)
    left, right = 2.0 / width, 1.0 - 1.0 / width
    bottom, top = 0.6 / height, 1.0 - 0.8 / height
    ax = fig.add_axes([left, bottom, right - left - 0.4 / width, top - bottom])
    cax = fig.add_axes([right - 0.25 / width, bottom, 0.15 / width, top - bottom])
    limit = float(np.abs(wmap.mean).max()) or 1.0
    image = ax.imshow(wmap.mean, cmap='RdBu_r', vmin=-limit, vmax=limit, aspect='auto',
                      interpolation='nearest')
    fig.colorbar(image, cax=cax)
    for _, start, _ in wmap.convs[1:]:
        ax.axhline(start - 0.5, color='black', linewidth=0.5)
    ax.set_yticks([(s + e - 1) / 2 for _, s, e in wmap.convs])
    labels = [name for name, _, _ in wmap.convs]
    # drop a shared owner prefix such as 'backbone.' (only the first name component: the
    # layer names after it tell the convs of a stage apart)
    common = os.path.commonprefix(labels) if len(labels) > 1 else ''
    common = common[:common.find('.') + 1]
    ax.set_yticklabels([label[len(common):] for label in labels], fontsize=6)
    ax.set_xlabel(f'cell j (n = {cols})')
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
