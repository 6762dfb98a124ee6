"""A fused linear-entropy Triton kernel: exact full-vocabulary entropy of softmax(h @ W.T) per
row, the logits never leaving the chip (a candidate for pipelines/core/entropy.py's GPU path, issue
30
item 3; bench/gpu_issue30.py times it against a bare bf16 matmul and checks it against float64).

Each program owns BLOCK_M rows and walks the whole vocabulary in BLOCK_N tiles. A tile's logits
are a tensor-core GEMM over K in BLOCK_K steps (bf16 inputs, float32 accumulation: every bf16
product is exact in float32, so the logits are the float32 ones, as pipelines/core/entropy.py's TF32
tiles), then folded into the same online softmax-entropy as pipelines/core/entropy.py: m = running
max, s = sum e^(z-m), u = sum e^(z-m)(z-m); H = log s - u/s. Only [BLOCK_M] statistics persist.

Untimed so far (no GPU in the session that wrote it); on CPU it runs in Triton's interpreter
(TRITON_INTERPRET=1, set before importing this module), which is how the suite checks it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages): Hopper-sized GEMM tiles; autotuned per (N, K).
CONFIGS = [(128, 128, 64, 8, 4), (128, 256, 64, 8, 3), (64, 256, 64, 4, 4), (128, 128, 128, 8, 3)]


@triton.jit
def _entropy_rows(
    h_ptr, w_ptr, out_ptr, M, N, K,
    stride_hm, stride_hk, stride_wn, stride_wk,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = tl.arange(0, BLOCK_K)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    s_i = tl.zeros((BLOCK_M,), tl.float32)
    u_i = tl.zeros((BLOCK_M,), tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + rk
            a = tl.load(
                h_ptr + rm[:, None] * stride_hm + kk[None, :] * stride_hk,
                mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0,
            )  # fmt: skip
            b = tl.load(
                w_ptr + rn[None, :] * stride_wn + kk[:, None] * stride_wk,
                mask=(rn[None, :] < N) & (kk[:, None] < K), other=0.0,
            )  # fmt: skip
            if IEEE:  # float32 products, no TF32 rounding (float32 inputs; the interpreter)
                acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
            else:  # bf16/fp16 inputs: exact products, float32 sums
                acc = tl.dot(a, b, acc)
        valid = rn[None, :] < N
        m_new = tl.maximum(m_i, tl.max(tl.where(valid, acc, float("-inf")), 1))
        zc = tl.where(valid, acc - m_new[:, None], 0.0)
        e = tl.where(valid, tl.exp(zc), 0.0)
        scale = tl.exp(m_i - m_new)  # 0 on the first tile (m_i = -inf)
        shift = tl.where(s_i > 0, m_i - m_new, 0.0)  # no -inf * 0 on the first tile
        u_i = scale * (u_i + shift * s_i) + tl.sum(e * zc, 1)
        s_i = scale * s_i + tl.sum(e, 1)
        m_i = m_new
    tl.store(out_ptr + rm, tl.log(s_i) - u_i / s_i, mask=rm < M)


def fused_entropy(h: torch.Tensor, w: torch.Tensor, config: tuple | None = None) -> torch.Tensor:
    """[M, K] rows, [N, K] lm_head (same dtype) -> [M] float32 entropies. config: one of
    CONFIGS (default: the first; bench/gpu_issue30.py tries them all and keeps the fastest)."""
    if h.dtype != w.dtype or h.shape[1] != w.shape[1]:
        raise ValueError("h and w must share dtype and hidden size")
    block_m, block_n, block_k, warps, stages = config or CONFIGS[0]
    m, k = h.shape
    out = torch.empty(m, dtype=torch.float32, device=h.device)
    grid = (triton.cdiv(m, block_m),)
    # Triton's CPU interpreter computes bf16 dots wrongly (measured: errors of 1e10), so off the
    # GPU the tiles are upcast: bf16 products are exact in float32 either way.
    ieee = h.dtype == torch.float32 or not h.is_cuda
    _entropy_rows[grid](
        h, w, out, m, w.shape[0], k,
        h.stride(0), h.stride(1), w.stride(0), w.stride(1),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, IEEE=ieee,
        num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out
