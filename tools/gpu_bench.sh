#!/usr/bin/env bash
# SSD300 on the GPU machine in one call: training-step images/s and TFLOP/s on the JAX and PyTorch
# backends (float32 and mixed_bfloat16, 300x300, batch 32), torchvision's ssd300_vgg16 step beside
# them, the input pipeline on real JPEGs against the step, and a few minutes of ssd_training.py
# with its loss per epoch. Markdown on stdout; gpu_bench.json and gpu_bench.md under $OUT.
#
# The GPU machine has PyTorch, JAX and torchvision (Python 3.12) but no Keras, no TensorFlow and no
# network, and ../shared (beside this checkout) does not travel with the working tree. So:
#
#   1. here, once:   bash tools/gpu_bench.sh prepare
#      downloads the wheels it lacks (keras, namex, optree, defusedxml; cp312 manylinux) and copies
#      ../shared/data/voc2007_roboflow_coco/valid (1004 VOC2007 JPEGs, 37 MB) into
#      .cache/gpu_bench/ (ignored by git; about 41 MB, under the 64 MiB a call may carry).
#   2. the one call, with the device tool:
#      run(command="bash tools/gpu_bench.sh run", carry=[".cache/gpu_bench"], timeout_s=600)
#      It takes about 7 minutes: every section runs in its own process, and the training run
#      stops after --train-minutes (3). Options after `run` go to tools/gpu_bench.py
#      (e.g. `run --skip train`, `run --backends jax --precisions float32`).
#
#   bash tools/gpu_bench.sh dry-run     (or --dry-run / --cpu) runs the same path here on the CPU
#      with tiny settings (batch 2, 64x64, 2 steps, a 2-step training) into runs/gpu_bench_dry/;
#      tests/test_dilated_conv.py::test_gpu_bench_dry_run runs it.
#
# The training run is today's entry point: python ssd_training.py --coco-json
# .cache/gpu_bench/data/voc2007_roboflow_coco/valid/_annotations.coco.json --input-size 300
# --batch-size 32 --epochs 40 --steps-per-epoch 20 --time-limit 3 --workers N --multiprocessing
# (= ssd300 train with the same options).
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=.cache/gpu_bench
SHARED=../shared/data/voc2007_roboflow_coco/valid
# Versions of what .venv runs here, so the GPU machine runs the same Keras.
WHEELS="keras==3.15.1 namex==0.1.0 optree==0.20.0 defusedxml==0.7.1"

mode="${1:-run}"
[ $# -gt 0 ] && shift
case "$mode" in
  prepare)
    PY="${PYTHON:-.venv/bin/python}"
    rm -rf "$STAGE/wheels"
    mkdir -p "$STAGE/wheels"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$STAGE/wheels" $WHEELS
    if [ -f "$SHARED/_annotations.coco.json" ]; then
      mkdir -p "$STAGE/data/voc2007_roboflow_coco"
      rm -rf "$STAGE/data/voc2007_roboflow_coco/valid"
      cp -r "$SHARED" "$STAGE/data/voc2007_roboflow_coco/valid"
    else
      echo "note: $SHARED is absent: the GPU run will use a synthetic dataset"
    fi
    ls "$STAGE/wheels"
    du -sh "$STAGE"
    size=$(du -sb "$STAGE" | cut -f1)
    if [ "$size" -gt $((60 * 1024 * 1024)) ]; then
      echo "error: $STAGE is over 60 MiB; the call carries at most 64 MiB with the working tree" >&2
      exit 1
    fi
    echo 'now: run(command="bash tools/gpu_bench.sh run", carry=[".cache/gpu_bench"], timeout_s=600)'
    ;;
  run)
    export OUT="${OUT:-runs/gpu_bench}"
    mkdir -p "$OUT"
    if ls "$STAGE"/wheels/*.whl >/dev/null 2>&1; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$STAGE"/wheels/*.whl
      export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    else
      echo "note: no $STAGE/wheels (run 'bash tools/gpu_bench.sh prepare' here first); using the installed Keras"
    fi
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    PYTHONUNBUFFERED=1 python3 tools/gpu_bench.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_bench.log"
    ;;
  dry-run|--dry-run|--cpu)
    PY="${PYTHON:-.venv/bin/python}"
    export OUT="${OUT:-runs/gpu_bench_dry}"
    "$PY" tools/gpu_bench.py --dry-run --out "$OUT" "$@"
    ;;
  *)
    echo "usage: bash tools/gpu_bench.sh prepare | run [gpu_bench.py options] | dry-run [options]" >&2
    exit 2
    ;;
esac
