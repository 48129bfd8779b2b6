"""Time per backbone stage against its share of multiply-adds, next to a baseline backbone.

    python tools/analysis/stage_profile.py CONFIG --compare BASELINE_CONFIG
        [--batch-size 8] [--shape 224 224] [--repeats 5] [--release-formulation]
        [--markdown] [--cfg-options ...]

Each top-level child of the backbone (stem parts, stages, final convs) is timed alone on the
input it receives in a full forward pass, in inference and in training (forward and backward),
and its multiply-adds are counted as the benchmark counts them (release formulation). The table
gives, per stage, the MAC and time shares and the ratios to the baseline's stage: a stage whose
time ratio is far above its MAC ratio is where a dynamic conv loses to its multiply-adds
(see :mod:`mmkw.analysis.stage_profile`). ``--release-formulation`` adds the table of CONFIG
with its dynamic convs run as their official release runs them.

Example (KW 1x ResNet-18 against ResNet-18)::

    python tools/analysis/stage_profile.py configs/kw_resnet/kw1x-resnet18_8xb32_in1k.py \\
        --compare configs/kw_resnet/resnet18_8xb32_in1k.py --markdown
"""
import argparse
import os.path as osp

import torch
from mmengine.config import DictAction

from mmkw.analysis.models import build_model_from_config
from mmkw.analysis.stage_profile import compare_stages, format_stage_table, profile_stages
from mmkw.engine import keep_freed_cpu_memory


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Per-stage time against multiply-adds')
    parser.add_argument('config')
    parser.add_argument('--compare', metavar='BASELINE_CONFIG', required=True)
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--shape', type=int, nargs='+', default=[224])
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--release-formulation', action='store_true')
    parser.add_argument('--threads', type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument('--markdown', action='store_true')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args(argv)
    if len(args.shape) == 1:
        args.shape = args.shape * 2
    if len(args.shape) != 2 or min(args.shape) < 1:
        parser.error(f'--shape takes one or two positive sizes, got {args.shape}')
    if args.batch_size < 1 or args.repeats < 1:
        parser.error('--batch-size and --repeats must be at least 1')
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_cpu_memory()
    settings = dict(batch_size=args.batch_size, shape=tuple(args.shape), repeats=args.repeats,
                    warmup=args.warmup)
    baseline = profile_stages(build_model_from_config(args.compare), **settings)
    model = build_model_from_config(args.config, cfg_options=args.cfg_options)
    variants = [('', False)] + ([(' (release formulation)', True)]
                                if args.release_formulation else [])
    name = osp.splitext(osp.basename(args.config))[0]
    base_name = osp.splitext(osp.basename(args.compare))[0]
    for suffix, release in variants:
        costs = profile_stages(model, release=release, **settings)
        print(f'\n{name}{suffix} vs {base_name}, batch {args.batch_size} at '
              f'{args.shape[0]}x{args.shape[1]}, {torch.get_num_threads()} threads')
        print(format_stage_table(compare_stages(costs, baseline), markdown=args.markdown))


if __name__ == '__main__':
    main()
