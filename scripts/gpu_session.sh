#!/usr/bin/env bash
# One device-machine call that does a GPU session's checks, in order, each step's log
# under $OUT (default bench/results/gpu): build with CUDA for the visible GPU, the CUDA
# and Triton tests natively, compute-sanitizer over the CUDA operator tests, then the
# issue #4 timings (DIIF decode at 180×320 → ×4, ×12 and 90×160 → ×16; every backend,
# float32 and bfloat16) as pytest-benchmark JSON with its report, and a chunk-size sweep
# of the GPU backends (at most 8 files come back from a device call: these are 8).
#
#   device run:  bash scripts/gpu_session.sh          (about 15 minutes on one H100)
#   STEPS="tests bench" bash scripts/gpu_session.sh   (skip the build when it is there)
set -uo pipefail
OUT=${OUT:-bench/results/gpu}
STEPS=${STEPS:-"build tests sanitizer bench"}
mkdir -p "$OUT"

step() { echo "== $1 ($(date +%T))"; }
has() { [[ " $STEPS " == *" $1 "* ]]; }

if has build; then
    step build
    arch=$(python -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
    TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=${MAX_JOBS:-16} \
        pip install --no-build-isolation -e . >"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
fi
if has tests; then
    step tests
    python -m implicit_kernels info >"$OUT/tests.txt" 2>&1
    python -m pytest -q -rs tests/test_ops_cuda.py tests/test_ops_cuda_hiif.py \
        tests/test_ops_cuda_liif_lte.py tests/test_triton_*.py >>"$OUT/tests.txt" 2>&1
    tail -15 "$OUT/tests.txt"
fi
if has sanitizer && command -v compute-sanitizer >/dev/null; then
    step sanitizer
    compute-sanitizer --error-exitcode 1 python -m pytest -q -x tests/test_ops_cuda.py \
        >"$OUT/sanitizer.txt" 2>&1
    tail -5 "$OUT/sanitizer.txt"
fi
if has bench; then
    step bench
    python -m pytest bench/test_diif.py -q -p no:cacheprovider \
        -k "diif- and fwd and not fwd+bwd and (-x4- or -x12- or headline) and (float32 or bfloat16)" \
        --benchmark-json "$OUT/diif.json" >"$OUT/bench.txt" 2>&1
    tail -5 "$OUT/bench.txt"
    python -m bench.report "$OUT/diif.json" --out-dir "$OUT"
    for args in "--backend triton" "--backend triton --dtype bfloat16" "--backend cuda"; do
        PYTHONPATH=. python scripts/chunk_sweep.py --decoder diif $args >>"$OUT/chunks.txt" 2>&1
    done
    tail -20 "$OUT/chunks.txt"
fi
