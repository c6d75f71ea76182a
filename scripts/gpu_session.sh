#!/usr/bin/env bash
# A first GPU run in two device-machine calls of under 8 minutes each, the most
# valuable evidence first; each call writes its logs under $OUT (default
# bench/results/gpu) and prints their tails.
#
#   call 1:  bash scripts/gpu_session.sh 1     (~7 min)
#     - the CUDA build starts in the background (python3, pip --no-deps --no-index, the
#       visible GPU's architecture only)            -> build.log
#     - meanwhile the DIIF bf16 headline: triton vs torch on a crop, the 1440p decode's
#       wall time at chunks 2^20 and 2^14, per-kernel time of every configuration
#       (scripts/diif_headline.py)                  -> headline.txt
#     - the Triton tests, -x, one pinned configuration (IK_TRITON_CONFIG; no autotuning,
#       so each kernel compiles once)               -> triton_tests.txt
#     - when the build is done: the CUDA operator tests -> cuda_tests.txt
#   call 2:  bash scripts/gpu_session.sh 2     (~6 min; needs call 1's build on the same
#            machine, else it builds first)
#     - the bf16 headline benchmark of every GPU backend (pytest-benchmark JSON and its
#       report)                                     -> diif.json, bench.txt, report files
#     - one compute-sanitizer case of the CUDA DIIF operator -> sanitizer.txt
#   fused:   bash scripts/gpu_session.sh fused   (one call, ~9 min; builds if needed)
#     - the fused CUDA C++ kernels' tests natively: tests/test_cuda_emulated.py's "gpu"
#       half (the tests the emulation runs in CI, here on the GPU) and the CUDA operator
#       tests
#                                                   -> fused_tests.txt
#     - DIIF timed: cuda against triton, torch, torch+compile and reference, bf16 and
#       float32, the 90×160 → ×16 headline and 180×320 → ×4 and ×12 forward, ×4
#       forward+backward; LIIF and LTE forward at ×4
#                                                   -> fused.json, fused_bench.txt, report files
#
# The Triton test glob leaves out the CPU-only files (the interpreter runner and the
# sm_90 compile check, which need no GPU).
set -uo pipefail
OUT=${OUT:-bench/results/gpu}
PIN=${IK_TRITON_CONFIG_FOR_TESTS:-32,32,4,2}
mkdir -p "$OUT"

#: The fused call's benchmark selection (pytest -k over bench/cases.py's ids); torch.compile
#: (a compilation per case) only for the bf16 DIIF headline.
FUSED_CASES="(bfloat16 or float32) and not dlte and (cuda or triton or torch or reference) \
and (not compile or (headline and bfloat16)) \
and ((not fwd+bwd and ((diif and (headline or -x4- or -x12-)) or ((liif or lte) and -x4-))) \
     or (fwd+bwd and diif and -x4-))"

step() { echo "== $1 ($(date +%T))"; }

build() {
    local arch
    arch=$(python3 -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
    TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=${MAX_JOBS:-16} python3 -m pip install \
        --no-build-isolation --no-deps --no-index -e . >"$OUT/build.log" 2>&1
}

triton_tests() {
    ls tests/test_triton_*.py | grep -v -e test_triton_interpreter.py -e test_triton_compile.py
}

built() { python3 -c "import implicit_kernels._C" 2>/dev/null; }

case "${1:-}" in
1)
    step "build (background)"
    build & build_pid=$!
    step "DIIF bf16 headline"
    timeout 240 python3 scripts/diif_headline.py >"$OUT/headline.txt" 2>&1
    tail -40 "$OUT/headline.txt"
    step "triton tests, pinned $PIN"
    IK_TRITON_CONFIG=$PIN timeout 150 python3 -m pytest -x -q -rs -p no:cacheprovider \
        $(triton_tests) >"$OUT/triton_tests.txt" 2>&1
    tail -15 "$OUT/triton_tests.txt"
    step "wait for the build"
    wait "$build_pid" || { tail -30 "$OUT/build.log"; exit 1; }
    step "CUDA operator tests"
    timeout 120 python3 -m pytest -x -q -rs -p no:cacheprovider tests/test_ops_cuda.py \
        tests/test_ops_cuda_hiif.py tests/test_ops_cuda_liif_lte.py >"$OUT/cuda_tests.txt" 2>&1
    tail -15 "$OUT/cuda_tests.txt"
    ;;
2)
    built || { step build; build || { tail -30 "$OUT/build.log"; exit 1; }; }
    step "bf16 headline benchmark, every GPU backend"
    timeout 300 python3 -m pytest bench/test_diif.py -q -p no:cacheprovider \
        -k "diif- and headline and bfloat16 and fwd and not fwd+bwd" \
        --benchmark-json "$OUT/diif.json" >"$OUT/bench.txt" 2>&1
    tail -8 "$OUT/bench.txt"
    python3 -m bench.report "$OUT/diif.json" --out-dir "$OUT"
    if command -v compute-sanitizer >/dev/null; then
        step "compute-sanitizer, one CUDA DIIF case"
        timeout 90 compute-sanitizer --error-exitcode 1 python3 -m pytest -q -x \
            -p no:cacheprovider "tests/test_ops_cuda.py::test_diif_pixels_and_opcheck" \
            >"$OUT/sanitizer.txt" 2>&1
        tail -5 "$OUT/sanitizer.txt"
    fi
    ;;
fused)
    built || { step build; build || { tail -30 "$OUT/build.log"; exit 1; }; }
    step "fused kernels' tests, natively"
    { timeout 90 python3 -m pytest -q -rs -p no:cacheprovider tests/test_cuda_emulated.py \
          -k gpu
      timeout 90 python3 -m pytest -q -rs -p no:cacheprovider tests/test_ops_cuda.py \
          tests/test_ops_cuda_liif_lte.py; } >"$OUT/fused_tests.txt" 2>&1
    tail -15 "$OUT/fused_tests.txt"
    step "fused kernels timed against the other backends"
    timeout 300 python3 -m pytest bench/test_diif.py bench/test_liif_lte.py -q \
        -p no:cacheprovider -k "$FUSED_CASES" --benchmark-json "$OUT/fused.json" \
        >"$OUT/fused_bench.txt" 2>&1
    tail -8 "$OUT/fused_bench.txt"
    python3 -m bench.report "$OUT/fused.json" --out-dir "$OUT"
    ;;
*)
    echo "usage: bash scripts/gpu_session.sh 1|2|fused   (see the header)" >&2
    exit 2
    ;;
esac
