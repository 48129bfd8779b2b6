"""Convert an official ODConv checkpoint (github.com/OSVAI/ODConv) to an mmkw checkpoint.

    python tools/model_converters/odconv_official_to_mmkw.py SRC DST \
        [--arch resnet18|resnet50|mobilenetv2_100|mobilenetv2_050] [--kernel-num K]

SRC: a released ImageNet model (``{'state_dict': ...}`` with DDP's ``module.`` prefixes) or a
bare state dict. DST: an mmengine checkpoint (``state_dict`` and ``meta``) of the mmpretrain
``ImageClassifier`` with ``backbone=dict(type='DynamicResNet' | 'DynamicMobileNetV2', ...,
conv_cfg=dict(type='ODConv', kernel_num=K))`` and a ``LinearClsHead`` (``backbone.*``,
``head.*``); it loads with ``strict=True``. The architecture, K and the attention reduction are
inferred from the checkpoint; the key mapping and its checks are in
``mmkw/converters/odconv_official.py``.
"""
import argparse
import sys

from mmkw.converters.odconv_official import (ARCHS, ConversionError, convert_odconv_official,
                                             save_checkpoint)


def kernel_num_arg(text: str):
    """``--kernel-num``: a positive int, ``none`` (a plain model) or ``infer``."""
    if text.lower() == 'infer':
        return 'infer'
    if text.lower() in ('none', 'plain'):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'--kernel-num takes a positive int or none, got '
                                         f'{text!r}') from None


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Convert an official ODConv checkpoint to an mmkw (mmpretrain) checkpoint')
    parser.add_argument('src', help='official checkpoint (.pth / .pth.tar)')
    parser.add_argument('dst', help='output mmkw checkpoint (.pth)')
    parser.add_argument('--arch', help=f'one of {", ".join(sorted(ARCHS))} (the release\'s '
                        'od_ names also work); inferred from the keys by default')
    parser.add_argument('--kernel-num', type=kernel_num_arg, default='infer',
                        help='K of the ODConv layers, or none for the release\'s plain models; '
                        'inferred from the kernels by default')
    parser.add_argument('--reduction', type=float,
                        help='attention reduction (the release\'s 0.0625); inferred from the '
                        'attention widths by default')
    parser.add_argument('--key', help='checkpoint entry holding the weights (default: '
                        '"state_dict", else "model")')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='unpickle the file fully (torch.load weights_only=False); only for '
                        'files from a trusted source, when the safe loader refuses them')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = convert_odconv_official(args.src, arch=args.arch, kernel_num=args.kernel_num,
                                         reduction=args.reduction, key=args.key,
                                         trust=args.trust_checkpoint)
    except ConversionError as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    path = save_checkpoint(result, args.dst)
    for note in result.notes:
        print(note)
    print(f'wrote {len(result.state_dict)} tensors to {path}')
    print(f'backbone: {result.meta["backbone"]}, head: LinearClsHead(num_classes='
          f'{result.target.num_classes})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
