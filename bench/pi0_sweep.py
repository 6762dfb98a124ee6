"""Which pretraining recipe makes the embedded pi_0 copy, and after how many steps?

Runs several recipes (sequences of phases built from pipelines/base_model's pieces) on the tiny
profile's model and corpus, and every `--eval-every` steps records the long-copy gain at D = 256
(pipelines/eval/probe.py) and the held-out perplexity. Steps, not seconds, are what carries over
from
a GPU to the 2-core CPU build: `--step-cost` times one step of each kind on this machine.

    python bench/pi0_sweep.py --prepare-data .gpudata/tiny.pt      # here: tokenize the corpus
    python bench/pi0_sweep.py --data .gpudata/tiny.pt --device cuda  # anywhere with torch
    python bench/pi0_sweep.py --data .gpudata/tiny.pt --step-cost    # CPU seconds per step kind
    python bench/pi0_sweep.py --smoke     # random tokens, a 64-wide model, every step kind once

--smoke (what the test suite runs, so that a refactor of pipelines/base_model cannot break the
sweep unseen) needs no --data and measures nothing.

Prints one JSON line: per recipe, its trajectory and final gain / perplexity.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.core.config import ModelSection, load_config  # noqa: E402
from pipelines.core.long_copy import long_copy_gain  # noqa: E402
from pipelines.world import base_model  # noqa: E402

# name -> phases: (kind, steps, lr). Kinds: induction (short random-token rows, a span recurs
# at a random distance), distance (the same at seq_len), text (corpus rows, repeated spans in
# half of them, + 4 distance rows), plain (corpus rows only), mixed (text + induction rows).
RECIPES: dict[str, list[tuple]] = {
    "induction_first": [("induction", 1500, 1e-3), ("distance", 200, 1e-3), ("text", 600, 2e-3)],
    "text_first": [
        ("plain", 300, 2e-3),
        ("induction", 1500, 1e-3),
        ("distance", 200, 1e-3),
        ("text", 400, 1e-3),
    ],
    "mixed_from_start": [("mixed", 2500, 2e-3)],
    "mixed_lr1e-3": [("mixed", 2500, 1e-3)],
    "text_with_spans": [("text", 2500, 2e-3)],
    "induction_first_long_text": [
        ("induction", 1500, 1e-3),
        ("distance", 200, 1e-3),
        ("text", 1500, 2e-3),
    ],
    "mixed_then_text": [("mixed", 1500, 2e-3), ("text", 600, 1e-3)],
    "induction_lr2e-3": [("induction", 1500, 2e-3), ("distance", 200, 1e-3), ("text", 600, 2e-3)],
    # second round: how the gain and perplexity trade along a long text phase, cheaper warm-ups
    "long_text": [("induction", 1100, 1e-3), ("distance", 200, 1e-3), ("text", 1000, 2e-3)],
    "rows16": [
        ("induction", 1500, 1e-3, {"copy_rows": 16}),
        ("distance", 200, 1e-3),
        ("text", 300, 2e-3),
    ],
    "vocab256": [
        ("induction", 1500, 1e-3, {"copy_vocab": 256}),
        ("distance", 200, 1e-3),
        ("text", 300, 2e-3),
    ],
    "keep_induction_rows": [
        ("induction", 1100, 1e-3),
        ("distance", 200, 1e-3),
        ("mixed", 1000, 2e-3),
    ],
}


# --smoke: every step kind, an evaluation after each phase
SMOKE_RECIPE = [(kind, 1, 1e-3) for kind in ("induction", "distance", "plain", "text", "mixed")]


def smoke_data(seq_len: int, vocab: int = 512) -> dict:
    """Random tokens shaped like what --prepare-data writes (rows of seq_len)."""
    g = torch.Generator().manual_seed(0)
    rows = lambda n: torch.randint(1, vocab, (n, seq_len), generator=g)  # noqa: E731
    return {"train": rows(32), "heldout": rows(24), "vocab": vocab, "eos": 0}


def prepare_data(out: Path) -> None:
    from pipelines.world.ingest import read_docs
    from pipelines.world.tokenizer import train_tokenizer
    from pipelines.world.world import ensure_corpus

    cfg = load_config("configs/tiny.yaml")
    corpus = ensure_corpus(cfg)
    train = read_docs(corpus, "train")["text"].to_pylist()
    heldout = read_docs(corpus, "heldout")["text"].to_pylist()
    out.parent.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(train, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency, out.parent)
    seq = cfg.pretrain.seq_len
    torch.save(
        {
            "train": base_model.pack(tok(train)["input_ids"], tok.eos_token_id, seq),
            "heldout": base_model.pack(tok(heldout)["input_ids"], tok.eos_token_id, seq),
            "vocab": len(tok),
            "eos": tok.eos_token_id,
        },
        out,
    )
    print(f"wrote {out}", file=sys.stderr)


class Batches:
    """Draws each kind of step's rows (CPU generator, then moved to the device)."""

    def __init__(self, data: dict, cfg, device: str, seed: int = 0):
        self.cfg, self.device = cfg, device
        self.gen = torch.Generator().manual_seed(seed)
        counts = torch.bincount(data["train"].flatten(), minlength=data["vocab"])
        self.all_frequent = torch.argsort(counts, descending=True)
        self.frequent = self.all_frequent[: cfg.copy_vocab]
        self.plain = data["train"]
        self.rows, self.copied = base_model.add_repeated_spans(data["train"], 0.5, seed)
        self.order = torch.randperm(len(self.rows), generator=self.gen)
        self.i = 0

    def _to(self, x, copied, vocab):
        v = None if vocab is None else vocab.to(self.device)
        return x.to(self.device), copied.to(self.device), v

    def _copy(self, n: int, length: int, span: int):
        x, c = base_model.copy_rows(self.frequent, n, length, span, self.gen)
        return self._to(x, c, self.frequent)

    def _text(self, spans: bool):
        b = self.cfg.batch_size
        idx = self.order[(torch.arange(b) + self.i * b) % len(self.order)]
        self.i += 1
        copied = self.copied[idx] if spans else torch.zeros_like(self.copied[idx])
        return self._to(self.rows[idx] if spans else self.plain[idx], copied, None)

    def parts(self, kind: str):
        c = self.cfg
        if kind == "induction":
            return [self._copy(c.copy_rows, c.copy_row_len, c.copy_span)]
        if kind == "distance":
            return [self._copy(c.copy_rows * c.copy_row_len // c.seq_len, c.seq_len, 64)]
        if kind == "plain":
            return [self._text(spans=False)]
        if kind == "text":
            return [self._text(spans=True), self._copy(4, c.seq_len, 64)]
        if kind == "mixed":
            return [self._text(spans=True), self._copy(c.copy_rows, c.copy_row_len, c.copy_span)]
        raise ValueError(kind)


def evaluate(model, heldout: torch.Tensor, stream, device: str) -> dict:
    blocks = heldout[:16].to(device)
    nll = base_model.mean_nll(model, blocks, 8)
    gain = long_copy_gain(model, stream, [256], samples=12)[256]["gain"]
    model.train()
    return {"ppl": round(math.exp(nll), 1), "gain256": round(gain, 3)}


def run_recipe(name, phases, data, pcfg, mcfg, device, eval_every, time_limit) -> dict:
    torch.manual_seed(0)
    model = base_model.build_model(mcfg, data["vocab"], data["eos"]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    batches = Batches(data, pcfg, device)
    stream = data["heldout"][16:].flatten().tolist()
    traj, start, total = [], time.perf_counter(), 0
    for kind, steps, lr, *overrides in phases:
        batches.cfg = dataclasses.replace(pcfg, **(overrides[0] if overrides else {}))
        batches.frequent = batches.all_frequent[: batches.cfg.copy_vocab]
        model.train()
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = base_model.lr_at(step, steps, lr, min(100, steps // 10))
            loss = sum(
                base_model.lm_and_copy_loss(model, x, c, 1.0, v)[0]
                for x, c, v in batches.parts(kind)
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += 1
            if total % eval_every == 0 or step == steps - 1:
                point = {"step": total, "phase": kind, "loss": round(loss.item(), 3)}
                traj.append(point | evaluate(model, data["heldout"], stream, device))
                print(name, traj[-1], file=sys.stderr, flush=True)
            if time.perf_counter() - start > time_limit:
                return {"trajectory": traj, "stopped": "time limit"}
    return {"trajectory": traj, "wall_s": round(time.perf_counter() - start, 1)}


def step_cost(data, pcfg, mcfg, threads: int) -> dict:
    """CPU seconds per step of each kind (median of 5 after 2 warm-ups)."""
    torch.set_num_threads(threads)
    model = base_model.build_model(mcfg, data["vocab"], data["eos"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = Batches(data, pcfg, "cpu")
    out = {}
    for kind in ("induction", "distance", "plain", "text", "mixed"):
        times = []
        for _ in range(7):
            t = time.perf_counter()
            loss = sum(
                base_model.lm_and_copy_loss(model, x, c, 1.0, v)[0]
                for x, c, v in batches.parts(kind)
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t)
        out[kind] = round(sorted(times[2:])[2], 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--prepare-data", type=Path, help="tokenize the tiny corpus into this .pt")
    p.add_argument("--data", type=Path, help="the .pt written by --prepare-data")
    p.add_argument("--device", default="cpu")
    p.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated names")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--time-limit", type=float, default=120.0, help="seconds per recipe")
    p.add_argument("--step-cost", action="store_true", help="time one step of each kind")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--hidden", type=int, help="override model.hidden_size")
    p.add_argument("--out", type=Path, help="also write the JSON here after every recipe")
    p.add_argument("--smoke", action="store_true", help="random tokens, tiny model: it runs")
    args = p.parse_args()
    if args.prepare_data:
        return prepare_data(args.prepare_data)
    cfg = load_config("configs/tiny.yaml")
    if args.smoke:
        RECIPES["smoke"] = SMOKE_RECIPE
        args.recipes, args.hidden = "smoke", args.hidden or 64
        args.time_limit = float("inf")  # every step kind must run, however loaded the machine
    data = smoke_data(cfg.pretrain.seq_len) if args.smoke else torch.load(args.data)
    mcfg = cfg.model
    if args.hidden:
        fields = vars(mcfg) | {"hidden_size": args.hidden, "intermediate_size": 3 * args.hidden}
        fields["num_heads"] = fields["num_kv_heads"] = max(1, args.hidden // 64)
        mcfg = ModelSection(**fields)
    if args.step_cost:
        print(json.dumps({"cpu_step_s": step_cost(data, cfg.pretrain, mcfg, args.threads)}))
        return
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    results = {}
    for name in args.recipes.split(","):
        results[name] = run_recipe(
            name, RECIPES[name], data, cfg.pretrain, mcfg, args.device,
            args.eval_every, args.time_limit,
        )  # fmt: skip
        line = json.dumps(
            {"device": args.device, "hidden": mcfg.hidden_size, "recipes": results}
            | ({"smoke": True} if args.smoke else {})
        )
        if args.out:
            args.out.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
