"""Build the model of a config and summarise it: parameters by role, dynamic convs per layer
type and, for Kernel Warehouse models, the warehouse table.

    python tools/analysis/warehouse_table.py CONFIG [CONFIG ...] [--forward H W [H W ...]]
        [--json OUT] [--cfg-options ...]

Works for every dynamic-conv method (KW, KW*, ODConv, DY-Conv, plain networks) and for
mmpretrain and mmdet configs alike. The parameters are split into static convs, the weights
the dynamic convs hold themselves (ODConv's and DY-Conv's K kernels), their attentions,
parameters shared between convs (KW's warehouses) and the rest (norms, linear layers). The
warehouse table has one row per warehouse: cells n, mixtures mt (so b = n / mt), cell shape
[c_out, c_in, kh, kw] and the number of convs sharing it (paper Table 14). Several configs
are summarised in one process (the main job prints its classifier's and its detector's), with
one ``--forward`` size for all or one per config.
"""
import argparse
import json
from typing import List, Optional, Tuple

import torch
from mmengine.config import DictAction

from mmkw.analysis.models import (PARAMETER_GROUPS, build_model_from_config, model_summary,
                                  warehouse_rows)

__all__ = ['format_dynamic_convs', 'format_groups', 'format_table', 'main', 'summarise',
           'warehouse_rows']


def format_table(rows: list) -> str:
    """KW's warehouse table (rows of :func:`~mmkw.analysis.models.warehouse_rows`)."""
    header = f"{'warehouse':<32} {'n':>5} {'mt':>5} {'b':>5} {'cell shape':<18} {'convs':>5}"
    lines = [header, '-' * len(header)]
    for row in rows:
        lines.append(f"{row['owner'] + '.' + row['name']:<32} {row['n']:>5} {row['mt']:>5} "
                     f"{row['n'] / row['mt']:>5.2f} {str(row['cell_shape']):<18} "
                     f"{row['convs']:>5}")
    return '\n'.join(lines)


def _millions(count: int) -> str:
    return f'{count / 1e6:.3f}M' if count else '0'


def format_groups(groups: dict) -> str:
    """The parameter split (:func:`~mmkw.analysis.models.parameter_groups`) as a table."""
    total = groups['total']['params'] or 1
    header = f"  {'parameters':<34} {'count':>10} {'share':>7} {'tensors':>8}"
    lines = [header, '  ' + '-' * (len(header) - 2)]
    for key, label in list(PARAMETER_GROUPS.items()) + [('total', 'total')]:
        row = groups[key]
        lines.append(f"  {label:<34} {_millions(row['params']):>10} "
                     f"{100 * row['params'] / total:>6.1f}% {row['tensors']:>8}")
    return '\n'.join(lines)


def format_dynamic_convs(rows: List[dict]) -> str:
    """The dynamic convs per layer type (:func:`~mmkw.analysis.models.dynamic_conv_rows`)."""
    header = (f"  {'dynamic conv':<16} {'convs':>5} {'1x1':>5} {'kxk':>5} {'dw':>4} "
              f"{'K':>5} {'weights':>10} {'attentions':>10} {'temperature':>11}")
    lines = [header, '  ' + '-' * (len(header) - 2)]
    for row in rows:
        kernels = ','.join(str(k) for k in row['kernels']) or '-'
        temperatures = ','.join(f'{t:g}' for t in row['temperatures']) or '-'
        lines.append(f"  {row['type']:<16} {row['convs']:>5} {row['pointwise']:>5} "
                     f"{row['spatial']:>5} {row['depthwise']:>4} {kernels:>5} "
                     f"{_millions(row['weights']):>10} {_millions(row['attentions']):>10} "
                     f'{temperatures:>11}')
    return '\n'.join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Print the parameters, dynamic convs and warehouses of models')
    parser.add_argument('configs', nargs='+', metavar='CONFIG', help='mmpretrain or mmdet config')
    parser.add_argument('--forward', nargs='+', type=int, metavar='H W',
                        help='also run a forward pass of the backbone on a [2, 3, H, W] input: '
                        'one H W for every config or one per config')
    parser.add_argument('--json', metavar='OUT', help='also write the summary to this file (a '
                        'list of summaries for several configs)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the configs, key=value pairs')
    args = parser.parse_args(argv)
    sizes = args.forward or []
    if sizes and len(sizes) not in (2, 2 * len(args.configs)):
        parser.error(f'--forward takes H W once or once per config ({len(args.configs)}), '
                     f'got {len(sizes)} numbers')
    pairs = [tuple(sizes[i:i + 2]) for i in range(0, len(sizes), 2)]
    args.forward_sizes = pairs * len(args.configs) if len(pairs) == 1 else pairs
    return args


def summarise(config: str, forward: Optional[Tuple[int, int]] = None,
              cfg_options: Optional[dict] = None) -> dict:
    """Print the summary of the model of ``config`` (with its backbone's output shapes on a
    ``[2, 3, *forward]`` input) and return it."""
    model = build_model_from_config(config, cfg_options).eval()
    summary = model_summary(model)
    backbone = getattr(model, 'backbone', None)
    if backbone is not None:
        print(f"{config}\n  model {summary['model']} with backbone {summary['backbone']}: "
              f"{summary['params'] / 1e6:.2f}M parameters "
              f"(backbone {summary['backbone_params'] / 1e6:.2f}M)")
    else:
        print(f"{config}\n  model {summary['model']}: {summary['params'] / 1e6:.2f}M "
              'parameters')
    if forward:
        if backbone is None:
            raise SystemExit(f'--forward runs the backbone, but {summary["model"]} has none')
        with torch.no_grad():
            outs = backbone(torch.randn(2, 3, *forward))
        print('  backbone outputs:', ', '.join(str(list(o.shape)) for o in outs))
    method = f" (conv method {summary['conv_method']})" if summary['conv_method'] else ''
    print(format_groups(summary['groups']))
    if summary['dynamic_convs']:
        print(f'  dynamic convs{method}:')
        print(format_dynamic_convs(summary['dynamic_convs']))
    else:
        print(f'  (no dynamic convs){method}')
    rows = summary['warehouses']
    print(format_table(rows) if rows else '  (no Kernel Warehouse layers)')
    return dict(config=config, **summary)


def main(argv: Optional[list] = None) -> List[dict]:
    """Summarise each config given on the command line; the summaries, in order."""
    args = parse_args(argv)
    sizes = args.forward_sizes or [None] * len(args.configs)
    summaries = [summarise(config, size, args.cfg_options)
                 for config, size in zip(args.configs, sizes)]
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(summaries[0] if len(summaries) == 1 else summaries, f, indent=2)
    return summaries


if __name__ == '__main__':
    main()
