#!/usr/bin/env bash
# GPU smoke check (issue 18, item 4): ONE JSON line on stdout, also written to $OUT/gpu_smoke.json.
#
# For one H100/H200 with no network, random-init models only, <= 6 minutes; needs python3 with
# torch, transformers, pyyaml, pyarrow (no Ray, no vLLM, no faiss). Parts, each under `timeout`:
#   entropy_32k   bench/entropy.py on a Qwen2.5-3B-shaped body (hidden 2048, 36 layers, 16 heads,
#                 2 kv heads, MLP 11008, vocab 151936) in bf16 at 32K tokens: tokens/s of the
#                 exact entropy path (pipelines/core/entropy.py) vs a forward producing logits, peak
#                 memory, MFU (over 989 TFLOP/s), lm_head entropy vs naive full-logits entropy,
#                 lm_head-only peak memory at 32K and 128K, and the lm_head_vocab_tile sweep.
#   entropy_128k  the same speed measurement at 128K tokens (one timed run, no warm-up run:
#                 the entropy update is compiled on 8 rows first and the body ran once already).
#   fsdp2         bench/gpu_smoke.py fsdp2: FSDP2 steps of a Qwen2.5-0.5B-shaped model at 8K.
# vLLM parts (scorer parity, NCCL into vLLM) are reported as skipped: no vLLM on the image.
#
#   PYTHONUNBUFFERED=1 bash bench/gpu_smoke.sh          # on the GPU machine
#   GPU_SMOKE_TINY=1 PY=.venv/bin/python bash bench/gpu_smoke.sh   # tiny shapes on CPU
#   PY=.venv/bin/python bash bench/gpu_smoke.sh --smoke        # the same
# Env: PY (python3), OUT (results folder), ENTROPY_LAYERS (36), OMP_NUM_THREADS (8).
set -u
cd "$(dirname "$0")/.."
# --smoke: GPU_SMOKE_TINY=1 (what the test suite runs, so that a refactor cannot break it unseen)
[ "${1:-}" = --smoke ] && export GPU_SMOKE_TINY=1
PY=${PY:-python3}
OUT=${OUT:-}
PARTS=$(mktemp -d)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

if [ "${GPU_SMOKE_TINY:-0}" = 1 ]; then
    SHAPE=(--device cpu --dtype float32 --vocab 1024 --hidden 64 --layers 2 --heads 2
        --kv-heads 1 --intermediate 128 --chunk 128 --vocab-tile 256 --threads 1)
    # limits only stop a hang: on 2 loaded cores a tiny part took over 60 s
    SHORT=512 LONG=1024 SWEEP=128,256,1024 LIMITS=(300 300 300)
else
    SHAPE=(--device cuda --dtype bfloat16 --vocab 151936 --hidden 2048
        --layers "${ENTROPY_LAYERS:-36}" --heads 16 --kv-heads 2 --intermediate 11008
        --chunk 2048 --vocab-tile 8192 --threads "$OMP_NUM_THREADS")
    SHORT=32768 LONG=131072 SWEEP=2048,8192,32768 LIMITS=(120 130 75)
fi
COMMON=(--skip-vllm --peak-tflops 989)

# part NAME LIMIT_S CMD...: stdout -> $PARTS/NAME.json, stderr -> console and NAME.log, rc -> NAME.rc
part() {
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    echo "[gpu_smoke] $name: start (limit ${limit}s)" >&2
    timeout --kill-after=5 "$limit" "$@" 2>&1 >"$PARTS/$name.json" | tee "$PARTS/$name.log" >&2
    local rc=${PIPESTATUS[0]}
    echo "$rc" >"$PARTS/$name.rc"
    echo "[gpu_smoke] $name: exit $rc after $((SECONDS - start))s" >&2
}

part entropy_32k "${LIMITS[0]}" "$PY" bench/entropy.py "${SHAPE[@]}" "${COMMON[@]}" \
    --speed-tokens "$SHORT" --mem-lengths "$SHORT,$LONG" --naive-max-gb 70 --speed-naive \
    --tile-sweep "$SWEEP" --repeats 2
part entropy_128k "${LIMITS[1]}" "$PY" bench/entropy.py "${SHAPE[@]}" "${COMMON[@]}" \
    --speed-tokens "$LONG" --mem-lengths "" --repeats 1 --warmup 0
part fsdp2 "${LIMITS[2]}" "$PY" bench/gpu_smoke.py fsdp2

if [ -n "$OUT" ]; then
    mkdir -p "$OUT/gpu_smoke_logs" && cp "$PARTS"/*.log "$OUT/gpu_smoke_logs/"
fi
"$PY" bench/gpu_smoke.py combine --parts "$PARTS" --out "$OUT"
