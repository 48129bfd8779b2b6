"""Write scikit-learn's ``load_digits`` (1797 real 8x8 handwritten digits, shipped with the
package) into mmpretrain's ImageNet folder layout, so the demo pretraining runs on real images
with no download::

    OUT/train/<class>/<index>.png    OUT/val/<class>/<index>.png
    OUT/meta/train.txt               OUT/meta/val.txt      ("<class>/<index>.png <label>")

Images are RGB PNGs at the native 8x8 (grey levels 0..16 scaled to 0..255); the configs resize
them. The split is stratified with a fixed seed, so every run writes the same files.
"""
import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = tuple(str(i) for i in range(10))


def make_digits_imagenet(out_dir: str, val_fraction: float = 0.2, seed: int = 0) -> dict:
    """Write the dataset (skipped when ``out_dir`` already holds the same one)."""
    from sklearn.datasets import load_digits
    out = Path(out_dir)
    settings = dict(val_fraction=val_fraction, seed=seed, version=1)
    meta_file = out / 'meta' / 'settings.json'
    if meta_file.is_file() and json.loads(meta_file.read_text()).get('settings') == settings:
        summary = json.loads(meta_file.read_text())
        print(f'digits dataset already at {out} ({summary["num_train"]} train, '
              f'{summary["num_val"]} val)')
        return summary
    if not 0 < val_fraction < 1:
        raise ValueError(f'val_fraction must be in (0, 1), got {val_fraction}')
    digits = load_digits()
    rng = np.random.default_rng(seed)
    splits = {'train': [], 'val': []}
    for label in range(len(CLASSES)):
        indices = rng.permutation(np.flatnonzero(digits.target == label))
        num_val = int(round(len(indices) * val_fraction))
        splits['val'] += [(i, label) for i in indices[:num_val]]
        splits['train'] += [(i, label) for i in indices[num_val:]]
    (out / 'meta').mkdir(parents=True, exist_ok=True)
    for split, items in splits.items():
        lines = []
        for index, label in sorted(items):
            pixels = (digits.images[index] * (255.0 / 16.0)).round().astype(np.uint8)
            relative = f'{CLASSES[label]}/{index:04d}.png'
            path = out / split / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).convert('RGB').save(path)
            lines.append(f'{relative} {label}')
        (out / 'meta' / f'{split}.txt').write_text('\n'.join(lines) + '\n')
    summary = dict(settings=settings, root=str(out), classes=list(CLASSES),
                   num_train=len(splits['train']), num_val=len(splits['val']))
    meta_file.write_text(json.dumps(summary, indent=1))
    print(f'wrote digits dataset to {out} ({summary["num_train"]} train, '
          f'{summary["num_val"]} val)')
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out-dir', default='data/digits')
    parser.add_argument('--val-fraction', type=float, default=0.2)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    make_digits_imagenet(args.out_dir, args.val_fraction, args.seed)


if __name__ == '__main__':
    main()
