"""The long-copy probe: does a causal LM read its context at distance D?

Training loss and short-context perplexity barely move when a model learns to use distant
context, so they cannot tell a checkpoint that reads its long context from one that does not.
This probe asks it directly. A 24-token span S of held-out text occurs twice, D tokens apart:

    with copy:     S                  + F  + S      (length D + span)
    without copy:  S' (other text)    + F  + S      (identical except the first span tokens)

D is the distance from the first occurrence's start to the second's start: the second S starts at
position D (0-based), the filler F has D - span tokens. Each sample is one contiguous window W of
held-out text, D tokens long, plus a span S from elsewhere in the stream (never overlapping W):
"without copy" is W + S (natural text, then S) and "with copy" is the same with W's first `span`
tokens replaced by S, so both sequences have the same length, the same tokens at every position
from `span` on, and the same positions for the scored tokens.

Scored tokens: the second S's tokens 2..span (span - 1 of them). Its first token cannot be copied:
nothing before it says that a repeat starts there (the filler before it is the same in both
sequences); once the model has seen S[0] it can find it earlier and copy what followed.

    gain(D) = mean NLL(S[1:] | without copy) - mean NLL(S[1:] | with copy)     (nats/token)

averaged over the scored tokens and then over `samples` samples. A model that copies has a gain of
several nats (SmolLM2-135M: 3.67 at D = 128); one that does not read its context, ~0.

The samples depend only on the token stream, the seed and D (not on the model or on which other
distances are asked for), so every checkpoint of a run sees identical inputs and their gains are
comparable.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.core.errors import UserError

SPAN, SAMPLES = 24, 12


def copy_probe_inputs(
    token_stream, distance: int, span: int = SPAN, samples: int = SAMPLES, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(with_copy, without_copy): two int64 arrays of shape (samples, distance + span)."""
    stream = np.asarray(token_stream, dtype=np.int64)
    if distance < span + 1:
        raise UserError(f"probe distance {distance} must exceed the span ({span} tokens)")
    if len(stream) < distance + 2 * span:
        raise UserError(
            f"probe distance {distance} needs at least {distance + 2 * span} held-out tokens; "
            f"the held-out stream has {len(stream)}"
        )
    rng = np.random.default_rng([seed, distance])  # the same samples whatever else is asked
    with_copy, without = [], []
    for _ in range(samples):
        a = int(rng.integers(0, len(stream) - distance + 1))  # window W = stream[a : a + D]
        while True:  # S = stream[b : b + span], anywhere outside W
            b = int(rng.integers(0, len(stream) - span + 1))
            if b + span <= a or b >= a + distance:
                break
        window, s = stream[a : a + distance], stream[b : b + span]
        without.append(np.concatenate([window, s]))
        with_copy.append(np.concatenate([s, window[span:], s]))
    return np.stack(with_copy), np.stack(without)


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def span_nll(model, ids: np.ndarray, span: int = SPAN, batch_size: int = 8) -> np.ndarray:
    """Per row, the mean NLL (float32 logits) of the last `span` tokens but their first."""
    model.eval()
    device, out = _model_device(model), []
    for i in range(0, len(ids), batch_size):
        batch = torch.as_tensor(ids[i : i + batch_size], device=device)
        try:  # only the last span positions' logits: (batch, span, vocab), not the whole row's
            logits = model(input_ids=batch, logits_to_keep=span).logits
        except TypeError:  # a model class without logits_to_keep
            logits = model(input_ids=batch).logits[:, -span:]
        logp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # position D+j predicts D+j+1
        target = batch[:, -span + 1 :]
        nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        out.append(nll.mean(dim=1).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def long_copy_gain(
    model,
    token_stream,
    distances,
    span: int = SPAN,
    samples: int = SAMPLES,
    seed: int = 0,
    batch_size: int = 8,
) -> dict[int, dict]:
    """{D: {"gain", "nll_with", "nll_without", "gain_se"}} in nats/token (module docstring).

    gain_se is the standard error of the gain over the samples."""
    out = {}
    for d in distances:
        with_copy, without = copy_probe_inputs(token_stream, int(d), span, samples, seed)
        nll_with = span_nll(model, with_copy, span, batch_size)
        nll_without = span_nll(model, without, span, batch_size)
        gains = nll_without - nll_with
        se = float(gains.std(ddof=1) / math.sqrt(len(gains))) if len(gains) > 1 else float("nan")
        out[int(d)] = {
            "gain": float(gains.mean()),
            "nll_with": float(nll_with.mean()),
            "nll_without": float(nll_without.mean()),
            "gain_se": se,
        }
    return out
