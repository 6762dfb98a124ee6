#!/usr/bin/env bash
# What the first real context-extension experiment (SmolLM2-135M, 8K -> 16K -> 32K) costs on one
# GPU: ONE JSON line on stdout, also written to $OUT/gpu_smollm2.json (issue 13, item 4).
#
# For one H100/H200 with no network, random-init weights of SmolLM2-135M's shape (Llama, hidden
# 576, 30 layers, 9 heads, 3 kv heads, head_dim 64, MLP 1536, vocab 49152, tied embeddings) in
# bf16, <= 6 minutes; needs python3 with torch, transformers, pyyaml, pyarrow (no Ray, no vLLM,
# no faiss). Parts, each under `timeout`; a failed part reports its error, the others still run:
#   entropy_16k, entropy_32k   bench/entropy.py --arch llama: tokens/s and peak memory of the
#                              exact per-token entropy path (pipelines/core/entropy.py) vs a forward
#                              producing logits, MFU; at 32K also the lm_head_vocab_tile sweep.
#   fsdp2_16k, fsdp2_32k       bench/gpu_smoke.py fsdp2 --shape smollm2: FSDP2 training steps at
#                              batch 1 (world size 1, bf16 MixedPrecisionPolicy, fp32 reduce,
#                              activation checkpointing, blocked loss): tokens/s, peak memory, MFU.
# Then bench/gpu_smoke.py combine-smollm2 adds the GPU-hour estimate (its assumptions inside).
#
#   PYTHONUNBUFFERED=1 bash bench/gpu_smollm2.sh          # on the GPU machine
#   GPU_SMOKE_TINY=1 PY=.venv/bin/python bash bench/gpu_smollm2.sh   # tiny shapes on CPU
#   PY=.venv/bin/python bash bench/gpu_smollm2.sh --smoke      # the same
# Env: PY (python3), OUT (results folder), OMP_NUM_THREADS (8).
set -u
cd "$(dirname "$0")/.."
# --smoke: GPU_SMOKE_TINY=1 (what the test suite runs, so that a refactor cannot break it unseen)
[ "${1:-}" = --smoke ] && export GPU_SMOKE_TINY=1
PY=${PY:-python3}
OUT=${OUT:-}
PARTS=$(mktemp -d)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

if [ "${GPU_SMOKE_TINY:-0}" = 1 ]; then
    SHAPE=(--arch llama --device cpu --dtype float32 --vocab 1024 --hidden 64 --layers 2
        --heads 2 --kv-heads 1 --intermediate 128 --chunk 128 --vocab-tile 256 --threads 1)
    # limits only stop a hang: on 2 loaded cores a tiny part took over 60 s
    T16=512 T32=1024 SWEEP=128,256,1024 LIMITS=(300 300 300 300)
else
    SHAPE=(--arch llama --device cuda --dtype bfloat16 --vocab 49152 --hidden 576 --layers 30
        --heads 9 --kv-heads 3 --intermediate 1536 --chunk 2048 --vocab-tile 8192
        --threads "$OMP_NUM_THREADS")
    T16=16384 T32=32768 SWEEP=4096,8192,16384,49152 LIMITS=(80 70 90 100)
fi
COMMON=(--skip-vllm --peak-tflops 989 --naive-max-gb 0 --repeats 3)

# part NAME LIMIT_S CMD...: stdout -> $PARTS/NAME.json, stderr -> console and NAME.log, rc -> NAME.rc
part() {
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    echo "[gpu_smollm2] $name: start (limit ${limit}s)" >&2
    timeout --kill-after=5 "$limit" "$@" 2>&1 >"$PARTS/$name.json" | tee "$PARTS/$name.log" >&2
    local rc=${PIPESTATUS[0]}
    echo "$rc" >"$PARTS/$name.rc"
    echo "[gpu_smollm2] $name: exit $rc after $((SECONDS - start))s" >&2
}

part entropy_16k "${LIMITS[0]}" "$PY" bench/entropy.py "${SHAPE[@]}" "${COMMON[@]}" \
    --speed-tokens "$T16" --mem-lengths "$T16"
part entropy_32k "${LIMITS[1]}" "$PY" bench/entropy.py "${SHAPE[@]}" "${COMMON[@]}" \
    --speed-tokens "$T32" --mem-lengths "$T32" --tile-sweep "$SWEEP"
part fsdp2_16k "${LIMITS[2]}" "$PY" bench/gpu_smoke.py fsdp2 --shape smollm2 --tokens "$T16" --steps 4
part fsdp2_32k "${LIMITS[3]}" "$PY" bench/gpu_smoke.py fsdp2 --shape smollm2 --tokens "$T32" --steps 4

if [ -n "$OUT" ]; then
    mkdir -p "$OUT/gpu_smollm2_logs" && cp "$PARTS"/*.log "$OUT/gpu_smollm2_logs/"
fi
"$PY" bench/gpu_smoke.py combine-smollm2 --parts "$PARTS" --out "$OUT"
