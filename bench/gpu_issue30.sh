#!/usr/bin/env bash
# GPU checks of issue 30 (item 3), one prepared script: ONE JSON line on stdout, also written to
# $OUT/gpu_issue30.json. For one H100/H200 with no network, random-init weights of Qwen2.5-3B's
# shape (hidden 2048, 36 layers, 16 heads, 2 kv heads, MLP 11008, vocab 151936) in bf16,
# <= 8 minutes; needs python3 with torch, transformers, pyyaml, pyarrow (no Ray, no vLLM).
# Parts, each under `timeout` (a failed part reports its error, the others still run):
#   entropy_32k, entropy_128k  bench/entropy.py: the exact entropy path (pipelines/core/entropy.py,
#                              TF32 logits tiles) vs a bf16 forward producing logits; its
#                              lm_head part vs a bare matmul; MFU. Goals: whole path >= 0.9x the
#                              forward, lm_head part >= 0.8x the bare matmul.
#   fused_32k, fused_128k      bench/gpu_issue30.py fused: lm_head-only variants (current TF32
#                              path, bf16 GEMMs with fp32 output, our fused Triton kernel
#                              bench/fused_entropy_triton.py, Liger-Kernel's fused linear
#                              entropy if importable) vs a bare bf16 matmul, max error vs
#                              float64 (goal <= 1e-5).
#   fsdp2_32k/64k/128k         bench/gpu_issue30.py fsdp2: one FSDP2 step through
#                              pipelines/steps/train_strategy.py at world size 1: tokens/s, MFU, peak
#                              memory beside the README's estimate.
#   transfer                   bench/gpu_transfer_standin.py: the weight-transfer buckets between
#                              two processes (NCCL; one GPU: CUDA IPC) vs a device-to-device copy.
#
#   PYTHONUNBUFFERED=1 bash bench/gpu_issue30.sh          # on the GPU machine
#   PY=.venv/bin/python bash bench/gpu_issue30.sh --smoke # tiny shapes on CPU (GPU_SMOKE_TINY=1)
#   bash bench/gpu_issue30.sh --help
# Env: PY (python3), OUT (results folder), OMP_NUM_THREADS (8), LIGER_DIR (an unpacked
# liger-kernel wheel to import, e.g. carried to the device: the image has no pip access).
set -u
cd "$(dirname "$0")/.."
case "${1:-}" in
--help | -h)
    sed -n '2,/^set -u/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
    ;;
--smoke) export GPU_SMOKE_TINY=1 ;;
"") ;;
*)
    echo "unknown argument '$1': use --help or --smoke" >&2
    exit 2
    ;;
esac
PY=${PY:-python3}
OUT=${OUT:-}
PARTS=$(mktemp -d)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

if [ "${GPU_SMOKE_TINY:-0}" = 1 ]; then
    SHAPE=(--device cpu --dtype float32 --vocab 1024 --hidden 64 --layers 2 --heads 2
        --kv-heads 1 --intermediate 128 --chunk 128 --vocab-tile 256 --threads 1)
    # limits only stop a hang: on 2 loaded cores a tiny part took over 60 s
    T32=512 T64=768 T128=1024 L=(300 300 300 300 300 300 300 300 300)
else
    SHAPE=(--device cuda --dtype bfloat16 --vocab 151936 --hidden 2048 --layers 36 --heads 16
        --kv-heads 2 --intermediate 11008 --chunk 2048 --vocab-tile 8192
        --threads "$OMP_NUM_THREADS")
    # limits in seconds, 480 in all (bench/results/gpu_smoke_h200_*.json: entropy at 32K took
    # ~50 s with its extras, FSDP2 of a 0.5B model ~40 s; a 3B step at 128K ~10-20 s; the
    # Triton kernel compiles its 4 configs at 32K, ~30 s, and reuses Triton's cache at 128K)
    T32=32768 T64=65536 T128=131072 L=(55 70 75 60 45 50 75 50)
fi
COMMON=(--skip-vllm --peak-tflops 989 --mem-lengths "" --naive-max-gb 0)

# part NAME LIMIT_S CMD...: stdout -> $PARTS/NAME.json, stderr -> console and NAME.log, rc -> NAME.rc
part() {
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    echo "[gpu_issue30] $name: start (limit ${limit}s)" >&2
    timeout --kill-after=5 "$limit" "$@" 2>&1 >"$PARTS/$name.json" | tee "$PARTS/$name.log" >&2
    local rc=${PIPESTATUS[0]}
    echo "$rc" >"$PARTS/$name.rc"
    echo "[gpu_issue30] $name: exit $rc after $((SECONDS - start))s" >&2
}

part entropy_32k "${L[0]}" "$PY" bench/entropy.py "${SHAPE[@]}" "${COMMON[@]}" \
    --speed-tokens "$T32" --repeats 2
part entropy_128k "${L[1]}" "$PY" bench/entropy.py "${SHAPE[@]}" "${COMMON[@]}" \
    --speed-tokens "$T128" --repeats 1 --warmup 0
part fused_32k "${L[2]}" "$PY" bench/gpu_issue30.py fused --tokens "$T32"
part fused_128k "${L[3]}" "$PY" bench/gpu_issue30.py fused --tokens "$T128"
part fsdp2_32k "${L[4]}" "$PY" bench/gpu_issue30.py fsdp2 --tokens "$T32"
part fsdp2_64k "${L[5]}" "$PY" bench/gpu_issue30.py fsdp2 --tokens "$T64"
part fsdp2_128k "${L[6]}" "$PY" bench/gpu_issue30.py fsdp2 --tokens "$T128"
part transfer "${L[7]}" "$PY" bench/gpu_issue30.py transfer --bucket-mb 256

if [ -n "$OUT" ]; then
    mkdir -p "$OUT/gpu_issue30_logs" && cp "$PARTS"/*.log "$OUT/gpu_issue30_logs/"
fi
"$PY" bench/gpu_issue30.py combine --parts "$PARTS" --out "$OUT"
