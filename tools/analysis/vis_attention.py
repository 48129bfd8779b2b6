"""Draw the learnt attentions of a dynamic-conv checkpoint as heatmaps (KW: paper Figure 3).

    python tools/analysis/vis_attention.py CONFIG CHECKPOINT --data DIR --out DIR
        [--tau T | --temperature T] [--max-images N] [--batch-size 32] [--device cpu|cuda]
        [--cfg-options ...]

Runs the model of CONFIG (mmpretrain or mmdet) with the weights of CHECKPOINT (``none``: the
freshly built model, e.g. with ``--tau 1`` to draw KW's init strategy) over the images of DIR,
an image folder (``DIR/val`` if it exists, else ``DIR/train``, else DIR; class sub-folders or
flat), preprocessed with the config's test pipeline (without annotation loading) and data
preprocessor, and averages the attentions of every dynamic conv over the images:

- **Kernel Warehouse** (KW, KW*): one map per warehouse, rows the linear mixtures of all convs
  sharing it (in model order), columns its cells (``<warehouse>.png``, colours centred at 0,
  conv boundaries marked; ``<warehouse>.npy`` the ``[mt, n]`` means, float64).
- **ODConv, DY-Conv** (kernel-mixture convs): one map of the mean kernel attention, rows the
  convs, columns their K kernels (``kernel_attention.png`` / ``.npy``, ``[convs, K]``).
- Anything else is listed as not drawn (e.g. ODConv's channel, filter and spatial attentions,
  convs with K = 1, methods without a map).

``index.json`` records the inputs and, per map, its shape and per-conv statistics (KW: how
often a row's largest attention sits on its beta cell, the mean attention on and off the beta
cells; kernel maps: the mean per kernel). ``--tau`` / ``--temperature`` sets the attentions'
temperature: KW's tau of Eq. 4 in [0, 1] (0, the default for KW, is the state at the end of
training; at 1 the means are beta, the init strategy), ODConv's and DY-Conv's softmax
temperature T >= 1 (default 1). Without it each attention keeps its method's final value.
"""
import argparse
import json
import os.path as osp
import warnings
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
from mmengine.config import Config, DictAction
from mmengine.dataset import Compose
from mmengine.registry import init_default_scope
from mmengine.utils import ProgressBar

from mmkw.analysis.attention_maps import (KERNEL_MAP_ROW_INCHES, AttentionRecorder, batches,
                                          find_images, kernel_maps, save_heatmap,
                                          undrawn_convs, warehouse_maps)
from mmkw.analysis.models import build_model_from_config, load_config, model_scope
from mmkw.ops import DynamicAttention, get_temperature, set_temperature

# used when the config has no test pipeline (a model-only mmpretrain config)
FALLBACK_PIPELINE = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=256, edge='short'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Heatmaps of the mean attentions of the '
                                     'dynamic convs of a model (KW: paper Figure 3)')
    parser.add_argument('config', help='mmpretrain or mmdet config of a dynamic-conv model')
    parser.add_argument('checkpoint', help="checkpoint to load, or 'none' for the initial model")
    parser.add_argument('--data', required=True, help='image folder (ImageNet layout or flat)')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--temperature', '--tau', dest='temperature', type=float,
                        help="the attentions' temperature: KW's tau in [0, 1] (0: trained "
                        'attentions, 1: beta), ODConv/DY-Conv T >= 1; default: the final value '
                        'of each method')
    parser.add_argument('--max-images', type=int, help='use at most this many images')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(argv)


def pipeline_of(cfg: Config) -> list:
    """The config's test (or val) pipeline without annotation loading (the images come
    without annotations), else :data:`FALLBACK_PIPELINE`."""
    pipeline = None
    for key in ('test_dataloader', 'val_dataloader'):
        pipeline = (cfg.get(key) or {}).get('dataset', {}).get('pipeline')
        if pipeline:
            break
    pipeline = pipeline or cfg.get('test_pipeline')
    if not pipeline:
        if model_scope(cfg) != 'mmpretrain':
            raise ValueError(f'{cfg.filename}: no test pipeline in the config (test_dataloader, '
                             'val_dataloader or test_pipeline); detection configs need one')
        return FALLBACK_PIPELINE
    return [t for t in pipeline if not str(t.get('type', '')).endswith('Annotations')]


def apply_temperature(model: torch.nn.Module, temperature: Optional[float]) -> float:
    """Set every attention's temperature (checked against each method's range); returns the
    temperature the attentions hold."""
    attentions = [m for m in model.modules() if isinstance(m, DynamicAttention)]
    if temperature is not None:
        for attention in attentions:
            low, high = attention.temperature_range
            if not low <= temperature <= high:
                raise ValueError(
                    f'--tau/--temperature {temperature:g} is outside the temperature range '
                    f'[{low:g}, {high:g}] of {type(attention).__name__}: KW takes tau in [0, 1] '
                    '(0: trained attentions, 1: beta), ODConv and DY-Conv take T >= 1')
        if set_temperature(model, temperature) == 0 and attentions and \
                any(a.temperature != temperature for a in attentions):
            warnings.warn('no attention has its temperature schedule enabled (KW with '
                          'attention_init=None): the temperature is not applied and the maps '
                          'show the learnt attentions')
    held = get_temperature(model)
    return temperature if held is None else held


def main(argv=None) -> List:
    args = parse_args(argv)
    if args.batch_size < 1:
        raise ValueError(f'--batch-size must be positive, got {args.batch_size}')
    cfg = load_config(args.config, args.cfg_options)
    scope = model_scope(cfg)
    checkpoint = None if args.checkpoint.lower() == 'none' else args.checkpoint
    model = build_model_from_config(cfg, checkpoint=checkpoint)
    model.to(args.device).eval()
    temperature = apply_temperature(model, args.temperature)

    init_default_scope(scope)
    pipeline = Compose(pipeline_of(cfg))
    images = find_images(args.data)
    if args.max_images:
        images = images[:args.max_images]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f'{len(images)} images from {args.data}, temperature {temperature}')
    progress = ProgressBar(len(images))
    with AttentionRecorder(model) as recorder, torch.no_grad():
        for start, paths in zip(range(0, len(images), args.batch_size),
                                batches(images, args.batch_size)):
            samples = [pipeline(dict(img_path=str(p), img_id=start + i))
                       for i, p in enumerate(paths)]
            data = model.data_preprocessor(
                dict(inputs=[s['inputs'] for s in samples],
                     data_samples=[s['data_samples'] for s in samples]), False)
            # tensor mode: every dynamic conv runs (detectors: backbone, neck and heads),
            # without post-processing
            model(data['inputs'], data['data_samples'], mode='tensor')
            progress.update(len(paths))
        print()
        maps = warehouse_maps(model, recorder)
        kernels = kernel_maps(model, recorder)
        not_drawn = undrawn_convs(model, recorder)
    index = dict(config=osp.abspath(args.config), checkpoint=args.checkpoint,
                 images=len(images), data=osp.abspath(args.data), tau=temperature,
                 temperature=temperature, warehouses={}, kernel_maps={}, not_drawn=not_drawn)
    for wmap in maps:
        np.save(out / f'{wmap.name}.npy', wmap.mean)
        rows, cols = wmap.mean.shape
        agreement = wmap.beta_argmax_agreement()
        save_heatmap(wmap, out / f'{wmap.name}.png',
                     title=f'warehouse {wmap.name}: mean alpha_ij\nover {len(images)} images, '
                     f'tau = {temperature:g}, {rows} mixtures x {cols} cells')
        index['warehouses'][wmap.name] = dict(
            mt=rows, n=cols, convs=wmap.conv_stats(),
            beta_argmax_agreement=agreement, mean_min=float(wmap.mean.min()),
            mean_max=float(wmap.mean.max()))
        print(f'{wmap.name:>24}: {rows:4d} x {cols:4d}, range [{wmap.mean.min():+.3f}, '
              f'{wmap.mean.max():+.3f}], largest attention on the beta cell in '
              f'{100 * agreement:.0f}% of rows')
    for kmap in kernels:
        np.save(out / f'{kmap.name}.npy', kmap.mean)
        rows, cols = kmap.mean.shape
        layer_types = ', '.join(sorted(set(kmap.layer_types)))
        save_heatmap(kmap, out / f'{kmap.name}.png', row_inches=KERNEL_MAP_ROW_INCHES,
                     title=f'{layer_types}: mean kernel attention per conv\nover {len(images)} '
                     f'images, T = {temperature:g}, {rows} convs x {cols} kernels')
        index['kernel_maps'][kmap.name] = dict(
            convs=kmap.conv_stats(), kernel_num=cols, num_convs=rows,
            mean_min=float(kmap.mean.min()), mean_max=float(kmap.mean.max()))
        print(f'{kmap.name:>24}: {rows:4d} convs x {cols} kernels ({layer_types}), range '
              f'[{kmap.mean.min():+.3f}, {kmap.mean.max():+.3f}]')
    for note in not_drawn:
        print(f'not drawn: {note}')
    (out / 'index.json').write_text(json.dumps(index, indent=2))
    drawn = maps + kernels
    print(f'wrote {len(drawn)} heatmaps to {out}')
    return drawn


if __name__ == '__main__':
    main()
