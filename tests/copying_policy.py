"""A real Qwen2 policy that copies from its context, for the tests that need one (verification,
the long-copy probe): trained by `train_copier` (`python tests/copying_policy.py`, ~10 minutes on
2 cores), shipped in tests/assets/copier, and re-measured by the fixture on every test run.

Rows of uniform random tokens, each starting with a SINK token (as inputs start with BOS), in
which a 32-token span recurs at a random distance. Until it copies, loss = mean NLL over all
tokens + mean NLL over the recurring tokens (the copy signal: plain LM loss alone dilutes it ~10x
and induction takes many more steps to form); after that the plain LM loss at a lower rate, which
restores calibration where nothing can be copied (the copy term had traded it away).

Training stops on the properties the tests rely on, both measured on held-out cases built by
`copy_case`, the same generator the tests use (other seeds):
  * it copies: a chunk holding the key and its continuation lowers the entropy at the probed
    positions by r >= COPY_R_MIN (relative reduction, as the verifier computes it; 10th pct);
  * without the chunk the continuation is unpredictable: mean entropy at the probed positions
    >= UNPREDICTABLE_H_MIN of the uniform entropy;
  * it ignores unrelated context: a chunk of tokens the document does not contain changes the
    entropy there by |r| <= UNRELATED_R_MAX (90th percentile).
Which of the two settles first depends on the CPU's floating-point details (issue 12: one
machine's copier copied but let an unrelated prefix lower the entropy by r = 0.34); with both in
the stopping rule, every machine ends in the state the tests need, or the fixture says it did not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

VOCAB = 512
SINK = 0  # every row and every case starts with it, as Llama-family inputs start with BOS
ROW, SPAN = 128, 32
KEY, CONT = 8, 16
# Held-out quantiles the training stops on (32 cases); the tests assert on 16 other cases: median
# r of the continuation chunk >= 0.5 and median |r| of the unrelated one <= 0.02 (tau_neg), and
# at least 3/4 of each labelled right. A copier is an imperfect model: a few cases stay outliers
# (measured: |r| up to 0.15 for an unrelated chunk while 90% are below 0.008), so the proof is on
# the population, not on one case that may be one of them.
COPY_R_MIN = 0.6  # 10th percentile of r of the continuation chunk
# 90th percentile of |r| of the unrelated chunk: half the tests' tau_neg (0.02). At 0.008 the
# training ran ~2,700 steps (703 s) while the percentile hovered at 0.0082-0.0086 for 700 of them.
UNRELATED_R_MAX = 0.01
UNPREDICTABLE_H_MIN = 0.8  # tests assert > 0.6 x log(VOCAB) without the chunk

# Trained once by `python tests/copying_policy.py` (523-703 s on 2 cores) instead of in every
# test run; the fixture checks the stopping rule again on the shipped weights.
SHIPPED_COPIER = Path(__file__).parent / "assets" / "copier"
SHIPPED_COPIER_SHA256 = "c153396becb471abc11ed9eb12d1c1ab20db1c58fe443ca092a681797f66f4e0"


@dataclass
class CopyCase:
    doc: list[int]  # noise, key, continuation, noise
    positions: list[int]  # inside the continuation: unpredictable without the chunk
    with_continuation: list[int]  # a chunk holding the key and the continuation
    unrelated: list[int]  # a chunk sharing no token with the document


def copy_case(gen: torch.Generator) -> CopyCase:
    perm = (1 + torch.randperm(VOCAB - 1, generator=gen)).tolist()
    own, other = perm[:96], perm[96:]
    key, cont, noise = own[:KEY], own[KEY : KEY + CONT], own[KEY + CONT :]
    doc = [SINK] + noise[:40] + key + cont + noise[40:60]
    start = 1 + 40 + KEY
    chunk = [SINK] + noise[60:70] + key + cont + noise[70:72]
    unrelated = [SINK] + [other[int(i)] for i in torch.randint(0, len(other), (44,), generator=gen)]
    return CopyCase(doc, [start + 2, start + 6, start + 10, start + 14], chunk, unrelated)


def _entropies(model, ids: list[int], positions: list[int]) -> torch.Tensor:
    logits = model(input_ids=torch.tensor([ids])).logits[0, positions].double()
    logp = torch.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum(-1)


@torch.no_grad()
def measure(model, cases: list[CopyCase]) -> tuple[list[float], list[float], list[float]]:
    """Per case: mean entropy at the positions without a chunk (as a share of the uniform one),
    and r of the continuation chunk and of the unrelated chunk (the verifier's formula: mean over
    positions of (H(x_t | d) - H(x_t | c + d)) / H(x_t | d))."""
    model.eval()
    h_share, r_copy, r_other = [], [], []
    for case in cases:
        h0 = _entropies(model, case.doc, case.positions)
        h_share.append(float(h0.mean()) / math.log(VOCAB))
        for chunk, out in ((case.with_continuation, r_copy), (case.unrelated, r_other)):
            shifted = [len(chunk) + p for p in case.positions]
            h = _entropies(model, chunk + case.doc, shifted)
            out.append(float(((h0 - h) / h0).mean()))
    model.train()
    return h_share, r_copy, r_other


def _quantile(values: list[float], q: float) -> float:
    return float(torch.quantile(torch.tensor(values, dtype=torch.float64), q))


def _batch(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(1, VOCAB, (n, ROW), generator=gen)
    copied = torch.zeros((n, ROW), dtype=torch.bool)
    for i in range(n):
        a = int(torch.randint(1, ROW - 2 * SPAN + 1, (1,), generator=gen))
        b = a + SPAN + int(torch.randint(0, ROW - 2 * SPAN - a + 1, (1,), generator=gen))
        x[i, b : b + SPAN] = x[i, a : a + SPAN]
        copied[i, b + 1 : b + SPAN] = True
    x[:, 0] = SINK  # a token every row starts with: where heads look when nothing matches
    # ... and which also appears inside rows, as BOS does between packed documents (the verifier
    # feeds c + d, both starting with it)
    inner = torch.randint(1, ROW, (n,), generator=gen)
    keep = torch.rand(n, generator=gen) < 0.5
    x[keep, inner[keep]] = SINK
    copied[keep, inner[keep]] = False
    return x, copied


def held_out_cases() -> list[CopyCase]:
    """The 32 cases the stopping rule is measured on (the tests use other seeds)."""
    return [copy_case(torch.Generator().manual_seed(1000 + i)) for i in range(32)]


def copier_state(model, cases: list[CopyCase]) -> dict:
    """The stopping rule's quantiles on `cases`, and whether all three hold."""
    h_share, r_copy, r_other = measure(model, cases)
    state = {
        "min_entropy_share": round(min(h_share), 4),
        "r_copy_p10": round(_quantile(r_copy, 0.1), 4),
        "abs_r_unrelated_p90": round(_quantile([abs(r) for r in r_other], 0.9), 5),
    }
    state["ready"] = (
        state["r_copy_p10"] >= COPY_R_MIN
        and state["min_entropy_share"] >= UNPREDICTABLE_H_MIN
        and state["abs_r_unrelated_p90"] <= UNRELATED_R_MAX
    )
    return state


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def shipped_copier(out_dir: Path) -> dict:
    """The copier trained once by `train_copier` and kept in tests/assets/copier (checksummed),
    copied to out_dir and measured again here: the same stopping rule must hold on this machine.
    Returns the measured state (the fixture asserts on it)."""
    import shutil

    from transformers import AutoModelForCausalLM

    weights = SHIPPED_COPIER / "model.safetensors"
    digest = _sha256(weights)
    if digest != SHIPPED_COPIER_SHA256:
        raise RuntimeError(
            f"{weights} has sha256 {digest}, not the shipped {SHIPPED_COPIER_SHA256}: "
            "regenerate it with `python tests/copying_policy.py` and update the checksum"
        )
    shutil.copytree(SHIPPED_COPIER, out_dir, dirs_exist_ok=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(out_dir))
    return {"shipped": True, **copier_state(model, held_out_cases())}


def train_copier(out_dir: Path, max_steps: int = 6000, check_every: int = 100) -> dict:
    """Train until both properties hold on 32 held-out cases; save the model; return the
    measured state (the fixture asserts on it)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=16,
        intermediate_size=256,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    held_out = held_out_cases()
    train_gen = torch.Generator().manual_seed(1)
    state = {"steps": 0, "ready": False}
    copy_weight = 1.0
    for step in range(1, max_steps + 1):
        x, copied = _batch(64, train_gen)
        logits = model(input_ids=x).logits[:, :-1]
        nll = F.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1), reduction="none")
        loss = nll.mean() + copy_weight * nll[copied[:, 1:].reshape(-1)].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % check_every:
            continue
        state = {"steps": step, **copier_state(model, held_out)}
        if state["ready"]:
            break
        if state["r_copy_p10"] >= COPY_R_MIN and copy_weight:
            # Copying works: from here the plain LM loss alone, at a lower rate. Most tokens
            # have nothing to copy, and the extra weight on the copied ones had traded their
            # calibration (entropy where nothing matches) for copying; now that is repaid.
            copy_weight = 0.0
            for group in opt.param_groups:
                group["lr"] = 3e-4
    model.save_pretrained(str(out_dir))
    return state


if __name__ == "__main__":
    import json

    state = train_copier(SHIPPED_COPIER)
    print(json.dumps({**state, "sha256": _sha256(SHIPPED_COPIER / "model.safetensors")}))
