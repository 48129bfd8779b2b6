"""Print the final metrics of demo runs from their work dirs (mmengine's scalars.json).

    python tools/analysis/demo_summary.py WORK_DIR [WORK_DIR ...]
"""
import argparse
import json
from pathlib import Path

METRICS = ('accuracy/top1', 'coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP',
           'coco/segm_mAP_50')


def final_metrics(work_dir: str) -> dict:
    """The metrics of the last evaluation logged in the newest run of ``work_dir``."""
    runs = sorted(Path(work_dir).glob('*/vis_data/scalars.json'))
    if not runs:
        raise FileNotFoundError(f'no mmengine log (*/vis_data/scalars.json) in {work_dir}')
    found = {}
    for line in runs[-1].read_text().splitlines():
        record = json.loads(line)
        found.update({k: v for k, v in record.items() if k in METRICS})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('work_dirs', nargs='+')
    args = parser.parse_args()
    for work_dir in args.work_dirs:
        metrics = final_metrics(work_dir)
        text = ', '.join(f'{k} {v:.3f}' if 'coco' in k else f'{k} {v:.2f}%'
                         for k, v in metrics.items())
        print(f'{Path(work_dir).name}: {text or "no metrics logged"}')


if __name__ == '__main__':
    main()
