#!/usr/bin/env bash
# Creates (or reuses) the project's virtual env at .venv with the pinned OpenMMLab stack and
# mmkw installed in editable mode. A second run with unchanged requirements takes seconds.
#
# mmcv 2.1.0 has no wheels on PyPI, so it is built from its sdist once and the wheel is kept in
# $MMKW_CACHE (default ~/.cache/mmkw), outside the repo, for later runs. A CPU-only build
# compiles only the C++ ops that mmdet and mmpretrain run on a CPU (tools/mmcv_ops_subset.py:
# RoIAlign, NMS, deformable convs; ~2 min on 2 cores); MMKW_MMCV_OPS=all builds every op
# (~7 min), MMKW_MMCV_OPS="op ..." a list of them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MMKW_VENV:-$ROOT/.venv}"
CACHE="${MMKW_CACHE:-$HOME/.cache/mmkw}"
PYTHON="${PYTHON:-python3.11}"
TORCH_VERSION=2.14.1
MMCV_VERSION=2.1.0
MMCV_OPS="${MMKW_MMCV_OPS:-default}"
# one cached wheel per op selection
WHEELS="$CACHE/wheels/torch-$TORCH_VERSION/mmcv-ops-$(printf '%s' "$MMCV_OPS" | tr -s ' ' '+')"

log() { printf '[setup_env %4ds] %s\n' "$SECONDS" "$*" >&2; }

stamp_of() {
  { cat "$ROOT"/requirements/*.txt "$ROOT/setup.py" "$ROOT/tools/setup_env.sh" \
      "$ROOT/tools/mmcv_ops_subset.py"; echo "mmcv ops: $MMCV_OPS"; } | sha256sum | cut -d' ' -f1
}
STAMP_FILE="$VENV/.mmkw-stamp"
if [[ -f "$STAMP_FILE" && "$(cat "$STAMP_FILE")" == "$(stamp_of)" ]]; then
  log "environment at $VENV is up to date"
  exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating virtual env at $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

log "installing torch $TORCH_VERSION and build tools"
"${PIP[@]}" install -q "torch==$TORCH_VERSION" "torchvision==0.29.1" "setuptools==80.9.0" \
  wheel ninja "numpy==2.4.*"

build_mmcv() {
  local work src
  work="$(mktemp -d)"
  src="$work/mmcv-$MMCV_VERSION"
  log "building mmcv $MMCV_VERSION with ops from source"
  "${PIP[@]}" download -q --no-deps --no-binary :all: "mmcv==$MMCV_VERSION" -d "$work"
  tar -xzf "$work"/mmcv-"$MMCV_VERSION".tar.gz -C "$work"
  # mmcv's setup.py builds CUDA kernels when torch sees a GPU or FORCE_CUDA=1; their bindings
  # are one file for all ops, so only a CPU-only build is trimmed.
  if "$VENV/bin/python" -c "import os, sys, torch; sys.exit(torch.cuda.is_available() or os.environ.get('FORCE_CUDA') == '1')"; then
    if [[ "$MMCV_OPS" == default ]]; then
      "$VENV/bin/python" "$ROOT/tools/mmcv_ops_subset.py" "$src"
    else
      # shellcheck disable=SC2086 # a list of op names
      "$VENV/bin/python" "$ROOT/tools/mmcv_ops_subset.py" "$src" $MMCV_OPS
    fi
  else
    log "CUDA build: every op is compiled"
  fi
  # torch 2.14's headers need C++20; mmcv 2.1.0 forces C++17.
  sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
  # Neither of the next two changes the compiled code; together they make the build about 2x
  # faster. No debug info (CFLAGS=-g0, appended after Python's -g) halves the time of every
  # one of these template-heavy sources, and most of them start by including torch's headers
  # through one helper, which is precompiled once for all. gcc uses the precompiled header
  # only when its flags match the build's and otherwise compiles as before.
  local cflags="${CFLAGS:+$CFLAGS }-g0"
  CFLAGS="$cflags" "$VENV/bin/python" "$ROOT/tools/mmcv_precompiled_header.py" "$src" ||
    log "no precompiled header; building without it"
  mkdir -p "$WHEELS"
  (cd "$src" &&
    CFLAGS="$cflags" MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
      "${PIP[@]}" wheel -q --no-build-isolation --no-deps -w "$WHEELS" .)
  rm -rf "$work"
}
if ! ls "$WHEELS"/mmcv-"$MMCV_VERSION"-*.whl >/dev/null 2>&1; then
  build_mmcv
else
  log "reusing built mmcv wheel from $WHEELS"
fi

log "installing mmcv, mmengine, mmdet, mmpretrain and test tools"
"${PIP[@]}" install -q "$WHEELS"/mmcv-"$MMCV_VERSION"-*.whl \
  -r "$ROOT/requirements/runtime.txt" -r "$ROOT/requirements/cls.txt" \
  -r "$ROOT/requirements/det.txt" -r "$ROOT/requirements/demo.txt" \
  -r "$ROOT/requirements/tests.txt" -r "$ROOT/requirements/deploy.txt"

log "installing mmkw (editable)"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"

"$VENV/bin/python" -c "import mmcv.ops, mmdet, mmpretrain, mmkw; print('mmkw stack ok:', mmcv.__version__, mmdet.__version__, mmpretrain.__version__)"

# Which CPU libraries run the dynamic convs is timed once per machine and cached in $CACHE
# (mmkw/ops/cpu_kernels.py; 15-40 s on 2 cores). Timing it with the set-up keeps that pause out
# of the first training run; machines with a GPU skip it (the first CPU run times it then).
log "timing mmkw's CPU kernel libraries (once per machine)"
MMKW_CACHE="$CACHE" "$VENV/bin/python" - <<'PY'
import torch
if torch.cuda.is_available():
    print('a GPU is present: CPU kernels not timed')
else:
    from mmkw.ops.cpu_kernels import cache_file, measured_choices
    choice = {mode: f'paths {paths}, matmul {matmul}'
              for mode, (paths, matmul) in measured_choices().items()}
    print(f'CPU kernels: {choice} ({cache_file()})')
PY
stamp_of >"$STAMP_FILE"
log "done"
