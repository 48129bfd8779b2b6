"""Build the model of a config and print its parameter count and warehouse table.

    python tools/analysis/warehouse_table.py CONFIG [--forward H W]

One row per warehouse: cells n, mixtures mt (so b = n / mt), cell shape [c_out, c_in, kh, kw]
and the number of convs sharing it (paper Table 14).
"""
import argparse

import torch
from mmengine.config import Config, DictAction

from mmkw.analysis.models import build_model_from_config
from mmkw.ops import WarehouseManager


def warehouse_rows(model: torch.nn.Module) -> list:
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, WarehouseManager) and module.built:
            rows += [dict(owner=name, **row) for row in module.summary()]
    return rows


def format_table(rows: list) -> str:
    header = f"{'warehouse':<32} {'n':>5} {'mt':>5} {'b':>5} {'cell shape':<18} {'convs':>5}"
    lines = [header, '-' * len(header)]
    for row in rows:
        lines.append(f"{row['owner'] + '.' + row['name']:<32} {row['n']:>5} {row['mt']:>5} "
                     f"{row['n'] / row['mt']:>5.2f} {str(row['cell_shape']):<18} "
                     f"{row['convs']:>5}")
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description='Print parameters and warehouses of a model')
    parser.add_argument('config')
    parser.add_argument('--forward', nargs=2, type=int, metavar=('H', 'W'),
                        help='also run a forward pass of the backbone on a [2, 3, H, W] input')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    model = build_model_from_config(cfg).eval()
    total = sum(p.numel() for p in model.parameters())
    backbone = sum(p.numel() for p in model.backbone.parameters())
    print(f'{args.config}\n  model {type(model).__name__} with backbone '
          f'{type(model.backbone).__name__}: {total / 1e6:.2f}M parameters '
          f'(backbone {backbone / 1e6:.2f}M)')
    if args.forward:
        with torch.no_grad():
            outs = model.backbone(torch.randn(2, 3, *args.forward))
        print('  backbone outputs:', ', '.join(str(list(o.shape)) for o in outs))
    rows = warehouse_rows(model)
    print(format_table(rows) if rows else '  (no Kernel Warehouse layers)')


if __name__ == '__main__':
    main()
