"""Convert a checkpoint of the official KernelDNA code (github.com/haiduo/KernelDNA) to mmkw.

    python tools/model_converters/kdna_official_to_mmkw.py SRC DST [--arch ARCH]

SRC: a checkpoint of the release's ``main.py`` (``{'state_dict': ..., 'arch': ...}``, keys with
or without DDP's ``module.`` prefix) or a bare state dict. DST: an mmengine checkpoint
(``state_dict`` and ``meta``) of the mmpretrain ``ImageClassifier`` of the matching mmkw config
(``backbone.*``, ``head.*``), which loads with ``strict=True``. The key mapping and its checks
are in ``mmkw/converters/kdna_official.py``.
"""
import argparse
import sys

from mmkw.converters.kdna_official import (ARCHS, ConversionError, convert_kdna_official,
                                           save_checkpoint)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Convert an official KernelDNA checkpoint to an mmkw checkpoint')
    parser.add_argument('src', help='official checkpoint (.pth / .pth.tar)')
    parser.add_argument('dst', help='output mmkw checkpoint (.pth)')
    parser.add_argument('--arch', help=f'the release\'s --arch ({", ".join(sorted(ARCHS))}); '
                        'default: the checkpoint\'s "arch" entry, else inferred from the keys')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='unpickle the file fully (torch.load weights_only=False); only for '
                        'files from a trusted source, when the safe loader refuses them')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = convert_kdna_official(args.src, arch=args.arch, trust=args.trust_checkpoint)
    except ConversionError as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    path = save_checkpoint(result, args.dst)
    for note in result.notes:
        print(note)
    print(f'wrote {len(result.state_dict)} tensors to {path}')
    if result.meta['config']:
        print(f'evaluate: python tools/test.py {result.meta["config"]} {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
