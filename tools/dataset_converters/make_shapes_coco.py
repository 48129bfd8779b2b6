"""Generate a tiny, deterministic COCO-format instance-segmentation dataset of shapes.

The demos and tests of Mask R-CNN fine-tuning need a real COCO-style task that
is small enough to train on in minutes, needs no download and is identical on
every machine. This tool draws it from scratch with numpy and OpenCV:

* every image is RGB, ``img_size`` x ``img_size``, with a textured background
  (smooth colour noise, stripes and/or gradients in random colours);
* it holds 1..``max_objects`` filled shapes of three classes -- ``circle`` (1),
  ``triangle`` (2) and ``square`` (3) -- with random position, size (about
  15%-45% of the image side), colour and rotation, drawn in order so that later
  shapes may partly hide earlier ones;
* each annotation describes the *visible* part of its shape: polygons traced
  from the visible mask, the bbox and area of that mask, ``iscrowd`` = 0.
  Shapes left with too little visible area are not annotated.

The output has the COCO 2017 layout that mmdet's ``CocoDataset`` reads::

    OUT/train2017/000001.jpg ...
    OUT/val2017/000001.jpg ...
    OUT/annotations/instances_train2017.json
    OUT/annotations/instances_val2017.json
    OUT/meta.json            # the arguments, so that a rerun can be skipped

Usage::

    python tools/dataset_converters/make_shapes_coco.py --out-dir data/shapes_coco \
        [--num-train 200] [--num-val 50] [--img-size 160] [--seed 0] [--max-objects 4]

or, from Python, ``make_shapes_coco(out_dir, ...)``.
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import shutil
import time
from typing import Any

import cv2
import numpy as np

# Bump when the drawing or annotation logic changes, so that datasets made by
# an older version are regenerated instead of silently reused.
GENERATOR_VERSION = 2

CATEGORIES: list[dict[str, Any]] = [
    {'id': 1, 'name': 'circle', 'supercategory': 'shape'},
    {'id': 2, 'name': 'triangle', 'supercategory': 'shape'},
    {'id': 3, 'name': 'square', 'supercategory': 'shape'},
]
SPLITS = ('train2017', 'val2017')

MIN_SIZE_FRAC = 0.15
MAX_SIZE_FRAC = 0.45
MIN_VISIBLE_FRAC = 0.4
MIN_VISIBLE_PIXELS = 60
# Fragments this small survive as specks after occlusion; they carry no shape
# information and would become degenerate polygons, so they are dropped.
MIN_FRAGMENT_PIXELS = 12
PLACEMENT_TRIES = 20
# cv2 drawing with fractional coordinates: points are scaled by 2**SHIFT.
SHIFT = 4


def _find_contours(mask: np.ndarray, mode: int) -> tuple[list, Any]:
    # OpenCV 3 returns (image, contours, hierarchy), later versions drop image.
    res = cv2.findContours(mask, mode, cv2.CHAIN_APPROX_SIMPLE)
    return list(res[-2]), res[-1]


def _has_hole(mask: np.ndarray) -> bool:
    """True if the mask encloses background, which COCO polygons cannot express."""
    _, hierarchy = _find_contours(mask.astype(np.uint8), cv2.RETR_CCOMP)
    return hierarchy is not None and bool((hierarchy[0][:, 3] >= 0).any())


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float32 RGB texture mixing one or two of noise, stripes and gradient."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size

    def smooth_noise() -> np.ndarray:
        grid = int(rng.integers(3, 9))
        low = rng.uniform(0, 255, size=(grid, grid, 3)).astype(np.float32)
        return cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)

    def stripes() -> np.ndarray:
        angle = rng.uniform(0, np.pi)
        freq = rng.uniform(3, 12)
        phase = rng.uniform(0, 2 * np.pi)
        t = np.cos(angle) * xx + np.sin(angle) * yy
        w = 0.5 + 0.5 * np.sin(2 * np.pi * freq * t + phase)
        c0, c1 = _random_colour(rng), _random_colour(rng)
        return (w[..., None] * c0 + (1 - w[..., None]) * c1).astype(np.float32)

    def gradient() -> np.ndarray:
        angle = rng.uniform(0, 2 * np.pi)
        t = np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)
        w = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        c0, c1 = _random_colour(rng), _random_colour(rng)
        return (w[..., None] * c0 + (1 - w[..., None]) * c1).astype(np.float32)

    makers = [smooth_noise, stripes, gradient]
    order = rng.permutation(len(makers))
    bg = makers[order[0]]()
    if rng.random() < 0.5:
        alpha = rng.uniform(0.2, 0.6)
        bg = (1 - alpha) * bg + alpha * makers[order[1]]()
    # Pixel noise keeps flat regions from being trivially separable by colour.
    bg += rng.normal(0, 6, size=bg.shape).astype(np.float32)
    return bg


def _shape_mask(rng: np.random.Generator, size: int,
                label: int) -> np.ndarray:
    """Full (unoccluded) boolean mask of one random shape of class ``label``."""
    side = rng.uniform(MIN_SIZE_FRAC, MAX_SIZE_FRAC) * size
    # Keep the shape's circumscribed circle inside the image so that the full
    # area is the true shape area, making the visibility ratio meaningful.
    radius = {1: side / 2, 2: side / np.sqrt(3), 3: side / np.sqrt(2)}[label]
    lo, hi = radius, size - 1 - radius
    cx = rng.uniform(lo, hi) if hi > lo else size / 2
    cy = rng.uniform(lo, hi) if hi > lo else size / 2
    theta = rng.uniform(0, 2 * np.pi)

    mask = np.zeros((size, size), np.uint8)
    scale = 1 << SHIFT
    if label == 1:
        cv2.circle(mask, (int(round(cx * scale)), int(round(cy * scale))),
                   int(round(side / 2 * scale)), 1, -1, cv2.LINE_8, SHIFT)
    else:
        n = 3 if label == 2 else 4
        angles = theta + 2 * np.pi * np.arange(n) / n
        pts = np.stack([cx + radius * np.cos(angles),
                        cy + radius * np.sin(angles)], axis=1)
        pts = np.round(pts * scale).astype(np.int32)
        cv2.fillPoly(mask, [pts], 1, cv2.LINE_8, SHIFT)
    return mask.astype(bool)


def _pick_colour(rng: np.random.Generator, bg: np.ndarray, mask: np.ndarray,
                 others: list[np.ndarray]) -> np.ndarray:
    """Prefer a colour distinct from the local background and earlier shapes,
    so every annotated shape is actually discernible in the pixels."""
    local = bg[mask].mean(axis=0) if mask.any() else bg.reshape(-1, 3).mean(0)
    best, best_dist = _random_colour(rng), -1.0
    for _ in range(10):
        colour = _random_colour(rng)
        dist = min([float(np.linalg.norm(colour - local))] +
                   [float(np.linalg.norm(colour - o)) for o in others])
        if dist > best_dist:
            best, best_dist = colour, dist
        if dist >= 90:
            break
    return best


def _visible_ok(vis_area: int, full_area: int, min_pixels: int) -> bool:
    return vis_area >= min_pixels and vis_area >= MIN_VISIBLE_FRAC * full_area


def _draw_image(rng: np.random.Generator, size: int, max_objects: int,
                min_pixels: int) -> tuple[np.ndarray, np.ndarray, list[int],
                                          list[int]]:
    """Return (uint8 RGB image, label map, class per layer, full area per layer).

    Layer k (1-based) owns the pixels where the label map equals k.
    """
    bg = _background(rng, size)
    label_map = np.zeros((size, size), np.int32)
    classes: list[int] = []
    full_areas: list[int] = []
    n_obj = int(rng.integers(1, max_objects + 1))
    for _ in range(n_obj):
        cls = int(rng.integers(1, len(CATEGORIES) + 1))
        layer = len(classes) + 1
        for _try in range(PLACEMENT_TRIES):
            full = _shape_mask(rng, size, cls)
            candidate = label_map.copy()
            candidate[full] = layer
            # Resample placements that would bury an earlier shape (leaving an
            # unannotated fragment) or punch a hole in it (polygons cannot
            # express holes); the visibility filter in _annotate stays as a
            # safety net for shapes that no try could place cleanly.
            ok = True
            for j in range(1, layer):
                vis = candidate == j
                if not _visible_ok(int(vis.sum()), full_areas[j - 1],
                                   min_pixels) or _has_hole(vis):
                    ok = False
                    break
            if ok:
                label_map = candidate
                classes.append(cls)
                full_areas.append(int(full.sum()))
                break

    img = bg.copy()
    colours: list[np.ndarray] = []
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for k in range(1, len(classes) + 1):
        vis = label_map == k
        colour = _pick_colour(rng, bg, vis, colours)
        colours.append(colour)
        # A mild linear shading so shapes are not perfectly flat stencils.
        angle = rng.uniform(0, 2 * np.pi)
        shade = 1 + 0.15 * (np.cos(angle) * (xx[vis] - 0.5) +
                            np.sin(angle) * (yy[vis] - 0.5))
        img[vis] = colour[None, :] * shade[:, None] + rng.normal(
            0, 4, size=(int(vis.sum()), 3))
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return img, label_map, classes, full_areas


def _annotate(label_map: np.ndarray, classes: list[int],
              full_areas: list[int], min_pixels: int) -> list[dict[str, Any]]:
    """COCO annotation dicts (without ids) for the visible part of each layer."""
    anns: list[dict[str, Any]] = []
    for k, (cls, full_area) in enumerate(zip(classes, full_areas), start=1):
        vis = (label_map == k).astype(np.uint8)
        n_cc, cc, stats, _ = cv2.connectedComponentsWithStats(vis, connectivity=8)
        for c in range(1, n_cc):
            if stats[c, cv2.CC_STAT_AREA] < MIN_FRAGMENT_PIXELS:
                vis[cc == c] = 0
        area = int(vis.sum())
        if not _visible_ok(area, full_area, min_pixels):
            continue
        # Contours of the raw mask run through boundary pixel *centres*, so the
        # rasterised polygon loses about half a pixel all round (~5% of the
        # area here). Tracing a 2x nearest-upsampled mask puts the outline on
        # quarter-pixel positions and pycocotools rasterises it back to
        # exactly this mask; the +0.5 centres the outline on the pixels.
        up = cv2.resize(vis, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
        contours, _ = _find_contours(up, cv2.RETR_EXTERNAL)
        polys = []
        for cnt in contours:
            if len(cnt) < 3 or cv2.contourArea(cnt) < 4.0:
                continue
            polys.append([float(v) for v in (cnt.reshape(-1) + 0.5) / 2])
        if not polys:
            continue
        ys, xs = np.nonzero(vis)
        x0, y0 = int(xs.min()), int(ys.min())
        anns.append({
            'category_id': cls,
            'segmentation': polys,
            'bbox': [float(x0), float(y0), float(xs.max() - x0 + 1),
                     float(ys.max() - y0 + 1)],
            'area': float(area),
            'iscrowd': 0,
        })
    return anns


def _make_split(out_dir: str, split: str, split_code: int, num_images: int,
                img_size: int, seed: int, max_objects: int) -> dict[str, Any]:
    img_dir = osp.join(out_dir, split)
    os.makedirs(img_dir, exist_ok=True)
    min_pixels = int(min(MIN_VISIBLE_PIXELS,
                         0.25 * (MIN_SIZE_FRAC * img_size) ** 2))
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    drawn_objects = 0
    for idx in range(num_images):
        # One generator per image, keyed by (seed, split, index): an image does
        # not change when the number of images in either split changes.
        rng = np.random.default_rng([seed, split_code, idx])
        for _ in range(100):
            img, label_map, classes, full_areas = _draw_image(
                rng, img_size, max_objects, min_pixels)
            anns = _annotate(label_map, classes, full_areas, min_pixels)
            if anns:
                break
        else:
            raise RuntimeError(
                f'could not draw an annotatable image at img_size={img_size}')
        drawn_objects += len(classes)
        image_id = idx + 1
        file_name = f'{image_id:06d}.jpg'
        cv2.imwrite(osp.join(img_dir, file_name),
                    cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append({'id': image_id, 'file_name': file_name,
                       'width': img_size, 'height': img_size})
        for ann in anns:
            annotations.append({'id': len(annotations) + 1,
                                'image_id': image_id, **ann})

    coco = {
        'info': {'description': 'mmkw synthetic shapes (make_shapes_coco.py)',
                 'version': str(GENERATOR_VERSION)},
        'licenses': [],
        'images': images,
        'annotations': annotations,
        'categories': CATEGORIES,
    }
    ann_file = osp.join(out_dir, 'annotations', f'instances_{split}.json')
    with open(ann_file, 'w') as f:
        json.dump(coco, f, separators=(',', ':'))
    per_cat = {c['name']: sum(a['category_id'] == c['id'] for a in annotations)
               for c in CATEGORIES}
    return {'img_dir': img_dir, 'ann_file': ann_file,
            'num_images': len(images), 'num_objects_drawn': drawn_objects,
            'num_annotations': len(annotations), 'per_category': per_cat}


def _existing_summary(out_dir: str, args: dict[str, Any]) -> dict[str, Any] | None:
    """Summary of a complete dataset made with ``args``, else None."""
    meta_file = osp.join(out_dir, 'meta.json')
    try:
        with open(meta_file) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    if meta.get('version') != GENERATOR_VERSION or meta.get('args') != args:
        return None
    splits: dict[str, Any] = {}
    try:
        for split in SPLITS:
            info = meta['splits'][split]
            info = {**info, 'img_dir': osp.join(out_dir, info['img_dir']),
                    'ann_file': osp.join(out_dir, info['ann_file'])}
            if not osp.isfile(info['ann_file']) \
                    or not osp.isdir(info['img_dir']) \
                    or len(os.listdir(info['img_dir'])) != info['num_images']:
                return None
            splits[split] = info
    except (KeyError, TypeError):
        # A hand-edited or truncated meta.json: regenerate rather than guess.
        return None
    return splits


def make_shapes_coco(out_dir: str, num_train: int = 200, num_val: int = 50,
                     img_size: int = 160, seed: int = 0,
                     max_objects: int = 4) -> dict[str, Any]:
    """Write the shapes dataset to ``out_dir`` (or reuse a matching one).

    Returns a dict with ``out_dir``, ``skipped`` (True if an existing dataset
    made with the same arguments was reused), ``seconds`` and, per split name
    (``train2017``/``val2017``), ``img_dir``, ``ann_file``, ``num_images``,
    ``num_objects_drawn``, ``num_annotations`` and ``per_category``.
    """
    if num_train < 1 or num_val < 1:
        raise ValueError('num_train and num_val must be >= 1')
    if img_size < 32:
        raise ValueError('img_size must be >= 32')
    if max_objects < 1:
        raise ValueError('max_objects must be >= 1')
    out_dir = osp.abspath(out_dir)
    args = {'num_train': num_train, 'num_val': num_val, 'img_size': img_size,
            'seed': seed, 'max_objects': max_objects}
    start = time.perf_counter()

    splits = _existing_summary(out_dir, args)
    skipped = splits is not None
    if splits is None:
        # Clear only what this tool writes, so stale images from a run with
        # different arguments cannot linger next to the new annotations.
        meta_file = osp.join(out_dir, 'meta.json')
        if osp.exists(meta_file):
            os.remove(meta_file)
        for sub in (*SPLITS, 'annotations'):
            shutil.rmtree(osp.join(out_dir, sub), ignore_errors=True)
        os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)
        splits = {}
        for code, (split, n) in enumerate(zip(SPLITS, (num_train, num_val))):
            splits[split] = _make_split(out_dir, split, code, n, img_size,
                                        seed, max_objects)
        # Written last: a run interrupted midway leaves no meta and is redone.
        # Paths are stored relative to out_dir so a moved dataset stays valid.
        rel = {split: {**info, 'img_dir': osp.relpath(info['img_dir'], out_dir),
                       'ann_file': osp.relpath(info['ann_file'], out_dir)}
               for split, info in splits.items()}
        with open(meta_file, 'w') as f:
            json.dump({'version': GENERATOR_VERSION, 'args': args,
                       'splits': rel}, f, indent=2)

    return {'out_dir': out_dir, 'skipped': skipped,
            'seconds': time.perf_counter() - start, **splits}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Generate a small synthetic COCO-format instance '
        'segmentation dataset (circle / triangle / square).')
    parser.add_argument('--out-dir', required=True,
                        help='output root, e.g. data/shapes_coco')
    parser.add_argument('--num-train', type=int, default=200)
    parser.add_argument('--num-val', type=int, default=50)
    parser.add_argument('--img-size', type=int, default=160)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--max-objects', type=int, default=4)
    return parser.parse_args()


def main() -> None:
    a = parse_args()
    info = make_shapes_coco(a.out_dir, a.num_train, a.num_val, a.img_size,
                            a.seed, a.max_objects)
    tr, va = info['train2017'], info['val2017']
    verb = 'exists (same arguments), skipped' if info['skipped'] else \
        f"generated in {info['seconds']:.1f}s"
    print(f"shapes_coco at {info['out_dir']} {verb}: "
          f"train {tr['num_images']} images / {tr['num_annotations']} anns, "
          f"val {va['num_images']} images / {va['num_annotations']} anns")


if __name__ == '__main__':
    main()
