"""Draw the learnt KW attentions of a checkpoint, one heatmap per warehouse (paper Figure 3).

    python tools/analysis/vis_attention.py CONFIG CHECKPOINT --data DIR --out DIR
        [--tau 0] [--max-images N] [--batch-size 32] [--device cpu|cuda] [--cfg-options ...]

Runs the model of CONFIG (mmpretrain) with the weights of CHECKPOINT (``none``: the freshly
initialised model, e.g. with ``--tau 1`` to draw the init strategy's beta) over the images of
DIR, an ImageNet-layout folder (``DIR/val`` if it exists, else ``DIR/train``, else DIR; class
sub-folders or flat), preprocessed with the config's test pipeline and data preprocessor.
The attentions alpha_ij of every KW conv are averaged over the images; for each warehouse the
rows are the linear mixtures of all convs sharing it (in model order), the columns its cells.

Writes to ``--out``: ``<warehouse>.png`` (heatmap, colours centred at 0, conv boundaries
marked), ``<warehouse>.npy`` (the ``[mt, n]`` means, float64) and ``index.json`` (per warehouse
its shape and, per conv, its row range, how often a row's largest attention sits on its beta
cell and the mean attention on and off the beta cells).
``--tau`` sets the temperature of Eq. 4 (default 0, the state at the end of training); at
``--tau 1`` the means are beta, i.e. the init strategy (a diagonal for one-to-one).
"""
import argparse
import json
import os.path as osp
import warnings
from pathlib import Path

import numpy as np
import torch
from mmengine.config import Config, DictAction
from mmengine.dataset import Compose
from mmengine.registry import init_default_scope
from mmengine.utils import ProgressBar

from mmkw.analysis.attention_maps import (AttentionRecorder, batches, find_images,
                                          save_heatmap, warehouse_maps)
from mmkw.analysis.models import build_model_from_config
from mmkw.ops import set_temperature

# used when the config has no test pipeline (a model-only config)
FALLBACK_PIPELINE = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=256, edge='short'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Heatmaps of the mean KW attentions per '
                                     'warehouse (paper Figure 3)')
    parser.add_argument('config', help='mmpretrain config of a KW model')
    parser.add_argument('checkpoint', help="checkpoint to load, or 'none' for the initial model")
    parser.add_argument('--data', required=True, help='ImageNet-layout image folder')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--tau', type=float, default=0.0,
                        help='temperature of Eq. 4 (0: trained attentions, 1: beta)')
    parser.add_argument('--max-images', type=int, help='use at most this many images')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(argv)


def pipeline_of(cfg: Config) -> list:
    """The config's test (or val) pipeline, else :data:`FALLBACK_PIPELINE`."""
    for key in ('test_dataloader', 'val_dataloader'):
        pipeline = cfg.get(key, {}).get('dataset', {}).get('pipeline')
        if pipeline:
            return pipeline
    return cfg.get('test_pipeline') or FALLBACK_PIPELINE


def main(argv=None) -> list:
    args = parse_args(argv)
    if not 0 <= args.tau <= 1:
        raise ValueError(f'--tau must be in [0, 1], got {args.tau}')
    if args.batch_size < 1:
        raise ValueError(f'--batch-size must be positive, got {args.batch_size}')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if cfg.get('default_scope', 'mmpretrain') != 'mmpretrain':
        raise ValueError(f'{args.config}: only mmpretrain (classification) configs are supported')
    model = build_model_from_config(cfg)
    if args.checkpoint.lower() != 'none':
        from mmengine.runner import load_checkpoint
        load_checkpoint(model, args.checkpoint, map_location='cpu', strict=True)
    model.to(args.device).eval()
    if set_temperature(model, args.tau) == 0 and args.tau > 0:
        warnings.warn('no KW attention has an init strategy (attention_init=None): tau is not '
                      'applied and the maps show the learnt attentions')

    init_default_scope('mmpretrain')
    pipeline = Compose(pipeline_of(cfg))
    images = find_images(args.data)
    if args.max_images:
        images = images[:args.max_images]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f'{len(images)} images from {args.data}, tau = {args.tau}')
    progress = ProgressBar(len(images))
    with AttentionRecorder(model) as recorder, torch.no_grad():
        for paths in batches(images, args.batch_size):
            samples = [pipeline(dict(img_path=str(p))) for p in paths]
            data = model.data_preprocessor(
                dict(inputs=[s['inputs'] for s in samples],
                     data_samples=[s['data_samples'] for s in samples]), False)
            model(data['inputs'], mode='tensor')
            progress.update(len(paths))
    print()
    maps = warehouse_maps(model, recorder)
    index = dict(config=osp.abspath(args.config), checkpoint=args.checkpoint,
                 images=len(images), data=osp.abspath(args.data), tau=args.tau, warehouses={})
    for wmap in maps:
        np.save(out / f'{wmap.name}.npy', wmap.mean)
        rows, cols = wmap.mean.shape
        agreement = wmap.beta_argmax_agreement()
        save_heatmap(wmap, out / f'{wmap.name}.png',
                     title=f'warehouse {wmap.name}: mean alpha_ij\nover {len(images)} images, '
                     f'tau = {args.tau:g}, {rows} mixtures x {cols} cells')
        index['warehouses'][wmap.name] = dict(
            mt=rows, n=cols, convs=wmap.conv_stats(),
            beta_argmax_agreement=agreement, mean_min=float(wmap.mean.min()),
            mean_max=float(wmap.mean.max()))
        print(f'{wmap.name:>24}: {rows:4d} x {cols:4d}, range [{wmap.mean.min():+.3f}, '
              f'{wmap.mean.max():+.3f}], largest attention on the beta cell in '
              f'{100 * agreement:.0f}% of rows')
    (out / 'index.json').write_text(json.dumps(index, indent=2))
    print(f'wrote {len(maps)} heatmaps to {out}')
    return maps


if __name__ == '__main__':
    main()
