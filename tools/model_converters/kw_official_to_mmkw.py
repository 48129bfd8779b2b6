"""Convert an official Kernel Warehouse checkpoint (github.com/OSVAI/KernelWarehouse) to mmkw.

    python tools/model_converters/kw_official_to_mmkw.py SRC DST [--arch ARCH] [--budget B]

SRC: a released ImageNet model (``{'model': ...}``), a released Mask R-CNN (mmdet 2.x,
``{'state_dict': ...}``) or a bare state dict. DST: an mmengine checkpoint (``state_dict`` and
``meta``) for the mmpretrain ``ImageClassifier`` of the matching mmkw config (``backbone.*``,
``head.*``), or for the mmdet detector (and, with ``prefix='backbone.'``, its backbone). The
architecture and the budget are inferred from the checkpoint; the key mapping and its checks are
in ``mmkw/converters/official.py``.
"""
import argparse
import sys

from mmkw.converters import ConversionError, convert_official, save_checkpoint


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Convert an official KernelWarehouse checkpoint to an mmkw checkpoint')
    parser.add_argument('src', help='official checkpoint (.pth)')
    parser.add_argument('dst', help='output mmkw checkpoint (.pth)')
    parser.add_argument('--arch', help='the release\'s model name: resnet18, resnet50, '
                        'mobilenetv2_100, mobilenetv2_050, convnext_tiny (kw_/kw1d2x_ prefixes '
                        'allowed); inferred from the keys by default')
    parser.add_argument('--budget', default='infer',
                        help="1/4x, 1/2x, 1x, 2x, 4x (or the release's 1d4x, 1d2x), or none for "
                        'a plain baseline; inferred from the warehouse shapes by default')
    parser.add_argument('--nonlocal-basis-ratio', type=float, default=None,
                        help='attention nonlocal-basis ratio (default: 1/16 when the '
                        'checkpoint has fc3 keys, as the release\'s ResNet50 KW 1/2x, else 1)')
    parser.add_argument('--task', choices=['classification', 'detection'],
                        help='inferred: detection when the keys start with "backbone."')
    parser.add_argument('--config', help='an mmkw config whose model the result must match in '
                        'full (e.g. a Mask R-CNN config: checks the neck and heads too)')
    parser.add_argument('--key', help='checkpoint entry holding the weights (default: '
                        '"state_dict", else "model"); e.g. model_ema')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='unpickle the file fully (torch.load weights_only=False); only for '
                        'files from a trusted source, when the safe loader refuses them')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = convert_official(args.src, arch=args.arch, budget=args.budget, task=args.task,
                                  nonlocal_basis_ratio=args.nonlocal_basis_ratio,
                                  config=args.config, key=args.key, trust=args.trust_checkpoint)
    except ConversionError as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    path = save_checkpoint(result, args.dst)
    for note in result.notes:
        print(note)
    print(f'wrote {len(result.state_dict)} tensors to {path}')
    config = result.meta['config']
    if config:
        print(f'evaluate: python tools/test.py {config} {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
