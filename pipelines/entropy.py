"""Exact full-vocabulary predictive entropy from final hidden states, without T x V logits.

Alignment (the whole system relies on it): for a sequence x_0..x_{T-1} with final hidden states
h_0..h_{T-1}, `out[t] = H(x_t | x_<t)`, computed from h_{t-1}; `out[0]` is NaN (nothing predicts
the first token).

Speed (shared/DESIGN.md, "Entropy speed"): rows are processed in chunks of `chunk_tokens`; each
chunk's entropy is written as H = log s - sum(e * (z - m)) / s with m = max z, e = exp(z - m),
s = sum e, and that function is wrapped in `torch.compile` so the element-wise passes fuse behind
the matmul (0.89x of a bare `h @ W.T` on 2 CPU cores). If compilation fails the eager version runs
(logged once). Peak extra memory is one chunk of logits (plus its exp), flat in T.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import torch

log = logging.getLogger(__name__)


def _chunk_entropy_eager(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(h @ w.T) per row; h [c, d], w [V, d] -> [c]."""
    z = h @ w.T
    z = z - z.amax(dim=-1, keepdim=True)
    e = z.exp()
    s = e.sum(dim=-1)
    return s.log() - (e * z).sum(dim=-1) / s


_compiled: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
_compile_failed = False
_compile_lock = threading.Lock()


def _chunk_entropy(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The compiled per-chunk entropy, falling back to eager for good if compilation fails."""
    global _compiled, _compile_failed
    if _compile_failed:
        return _chunk_entropy_eager(h, w)
    with _compile_lock:
        if _compiled is None:
            # dynamic=True: the last chunk of every document has another row count; one graph
            # serves all of them instead of a recompile per length.
            _compiled = torch.compile(_chunk_entropy_eager, dynamic=True)
    try:
        return _compiled(h, w)
    except Exception as e:  # noqa: BLE001 - any compiler/toolchain failure -> eager
        _compile_failed = True
        log.warning("torch.compile of the entropy chunk failed (%s); using eager", e)
        return _chunk_entropy_eager(h, w)


@torch.no_grad()
def entropies_of_rows(
    hidden: torch.Tensor, weight: torch.Tensor, chunk_tokens: int
) -> torch.Tensor:
    """Entropy of the next-token distribution predicted by each row of `hidden` ([N, d] -> [N])."""
    if chunk_tokens < 1:
        raise ValueError("chunk_tokens must be >= 1")
    hidden = hidden.float()
    weight = weight.float()
    out = torch.empty(hidden.shape[0], dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_tokens):
        rows = hidden[start : start + chunk_tokens].contiguous()
        out[start : start + rows.shape[0]] = _chunk_entropy(rows, weight)
    return out


def token_entropies(hidden: torch.Tensor, weight: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
    """[T, d] hidden states, [V, d] lm_head -> [T] with out[t] = H(x_t | x_<t), out[0] = NaN."""
    out = torch.full((hidden.shape[0],), float("nan"), dtype=torch.float32)
    if hidden.shape[0] > 1:
        out[1:] = entropies_of_rows(hidden[:-1], weight, chunk_tokens)
    return out


def entropies_at(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    positions: Sequence[int] | torch.Tensor,
    chunk_tokens: int = 256,
) -> torch.Tensor:
    """H(x_t | x_<t) only at the given positions t (each 1 <= t < T); same alignment."""
    pos = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
    if pos.numel() and (int(pos.min()) < 1 or int(pos.max()) >= hidden.shape[0]):
        raise ValueError(f"positions must lie in [1, {hidden.shape[0] - 1}], got {pos.tolist()}")
    return entropies_of_rows(hidden[pos - 1], weight, chunk_tokens)


@torch.no_grad()
def naive_token_entropies(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Reference: full T x V logits, float64 log_softmax. For tests only."""
    logp = torch.log_softmax(hidden.double() @ weight.double().T, dim=-1)
    ent = -(logp.exp() * logp).sum(dim=-1).float()
    out = torch.full((hidden.shape[0],), float("nan"), dtype=torch.float32)
    out[1:] = ent[:-1]
    return out
