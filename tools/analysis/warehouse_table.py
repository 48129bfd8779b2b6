"""Build the model of a config and summarise it: parameters by role, dynamic convs per layer
type and, for Kernel Warehouse models, the warehouse table.

    python tools/analysis/warehouse_table.py CONFIG [--forward H W] [--json OUT]
        [--cfg-options ...]

Works for every dynamic-conv method (KW, KW*, ODConv, DY-Conv, plain networks) and for
mmpretrain and mmdet configs alike. The parameters are split into static convs, the weights
the dynamic convs hold themselves (ODConv's and DY-Conv's K kernels), their attentions,
parameters shared between convs (KW's warehouses) and the rest (norms, linear layers). The
warehouse table has one row per warehouse: cells n, mixtures mt (so b = n / mt), cell shape
[c_out, c_in, kh, kw] and the number of convs sharing it (paper Table 14).
"""
import argparse
import json
from typing import List, Optional

import torch
from mmengine.config import DictAction

from mmkw.analysis.models import (PARAMETER_GROUPS, build_model_from_config, model_summary,
                                  warehouse_rows)

__all__ = ['format_dynamic_convs', 'format_groups', 'format_table', 'main', 'warehouse_rows']


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
        description='Print the parameters, dynamic convs and warehouses of a model')
    parser.add_argument('config', help='mmpretrain or mmdet config')
    parser.add_argument('--forward', nargs=2, type=int, metavar=('H', 'W'),
                        help='also run a forward pass of the backbone on a [2, 3, H, W] input')
    parser.add_argument('--json', metavar='OUT', help='also write the summary to this file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, key=value pairs')
    return parser.parse_args(argv)


def main(argv: Optional[list] = None) -> dict:
    args = parse_args(argv)
    model = build_model_from_config(args.config, args.cfg_options).eval()
    summary = model_summary(model)
    backbone = getattr(model, 'backbone', None)
    if backbone is not None:
        print(f"{args.config}\n  model {summary['model']} with backbone {summary['backbone']}: "
              f"{summary['params'] / 1e6:.2f}M parameters "
              f"(backbone {summary['backbone_params'] / 1e6:.2f}M)")
    else:
        print(f"{args.config}\n  model {summary['model']}: {summary['params'] / 1e6:.2f}M "
              'parameters')
    if args.forward:
        if backbone is None:
            raise SystemExit(f'--forward runs the backbone, but {summary["model"]} has none')
        with torch.no_grad():
            outs = backbone(torch.randn(2, 3, *args.forward))
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
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(config=args.config, **summary), f, indent=2)
    return summary


if __name__ == '__main__':
    main()
