#!/usr/bin/env bash
# The main job of the README: set up .venv, then the whole pipeline on embedded data, on CPU,
# for KW ResNet-18 (1x) and KernelDNA ResNet-18, the two systems mmkw was made for.
#   1. write the digits (ImageNet layout) and shapes (COCO layout) datasets;
#   2. print the parameter count and warehouse table of the classifier and the detector;
#   3. pretrain each on digits (KW with the tau schedule), evaluate top-1;
#   4. fine-tune Mask R-CNN with each backbone (KW's init strategy off) on shapes, evaluate COCO
#      box and mask AP;
#   5. draw the KW classifier's mean learnt attentions per warehouse (work_dirs/vis_attention).
# DEMO_BASELINE=1 also runs the same two stages with plain ResNet-18, DEMO_PEERS=1 with ODConv
# (4x) ResNet-18, for comparison.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash tools/setup_env.sh
PY="$ROOT/.venv/bin/python"
CLS=configs/kw_resnet/kw1x-resnet18_1xb16_digits.py
DET=configs/mask_rcnn/mask-rcnn_kw1x-r18-slim_fpn_shapes.py

"$PY" tools/dataset_converters/make_digits_imagenet.py --out-dir data/digits
"$PY" tools/dataset_converters/make_shapes_coco.py --out-dir data/shapes_coco
"$PY" tools/analysis/warehouse_table.py "$CLS" "$DET" --forward 16 16 160 160

run() {  # run CONFIG: train with the stock CLI, report wall time
  local start=$SECONDS
  "$PY" tools/train.py "$1" --work-dir "work_dirs/$(basename "$1" .py)"
  echo "[demo] $(basename "$1" .py): $((SECONDS - start)) s" | tee -a work_dirs/demo_times.txt
}
mkdir -p work_dirs
: > work_dirs/demo_times.txt
configs=("$CLS" "$DET"
         configs/kdna_resnet/kdna-resnet18_1xb16_digits.py
         configs/mask_rcnn/mask-rcnn_kdna-r18-slim_fpn_shapes.py)
if [[ "${DEMO_BASELINE:-0}" == 1 ]]; then
  configs+=(configs/kw_resnet/resnet18_1xb16_digits.py configs/mask_rcnn/mask-rcnn_r18-slim_fpn_shapes.py)
fi
if [[ "${DEMO_PEERS:-0}" == 1 ]]; then
  configs+=(configs/odconv/odconv4x-resnet18_1xb16_digits.py
            configs/mask_rcnn/mask-rcnn_odconv4x-r18-slim_fpn_shapes.py)
fi
for config in "${configs[@]}"; do
  run "$config"
done

# the learnt attentions of the pretrained classifier, one heatmap per warehouse (paper Figure 3)
CLS_DIR="work_dirs/$(basename "$CLS" .py)"
"$PY" tools/analysis/vis_attention.py "$CLS" "$(cat "$CLS_DIR/last_checkpoint")" --data data/digits \
  --out work_dirs/vis_attention/"$(basename "$CLS" .py)"

echo "================ demo results ================"
cat work_dirs/demo_times.txt
"$PY" tools/analysis/demo_summary.py $(for c in "${configs[@]}"; do echo "work_dirs/$(basename "$c" .py)"; done)
# the figure the README's 12-minute target is about (set-up check included)
echo "[demo] the whole main job: $((SECONDS / 60)) min $((SECONDS % 60)) s"
