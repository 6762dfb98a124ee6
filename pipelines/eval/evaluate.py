"""Evaluating a checkpoint (`policylong eval`): the RULER-style suite of
pipelines/eval/eval_tasks.py,
the long-copy probe and held-out perplexity, in one eval.json per model.

Per sample the prompt runs once; its KV cache is then reused for every question's lead (answer
prefix): greedy decoding for exact match, one forward per option for the likelihood score (mean
log-probability of the option's tokens), the cache cropped back to the prompt after each.

Scores per task and length, averaged over samples (a sample's score is the mean over its
questions, RULER's string-match-all):
    exact       share of gold answers found (case-insensitive) in the greedy continuation
    likelihood  share of questions whose gold answer has the highest mean log-probability among
                eval.options answers of the same kind, the wrong ones taken from the same prompt
                (chance = 1 / eval.options; a tie for first counts 1 / tied)

The evaluation runs in-process with HF transformers, on the GPU when there is one. It does not
go through the configured screening backend: on the small models it is built for, one forward per
prompt plus a few dozen cached decode steps cost less than starting an engine.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipelines.core.atomic import write_json_atomic
from pipelines.core.config import EvalSection
from pipelines.core.long_copy import SPAN
from pipelines.eval.eval_tasks import EvalSample, TaskBuilder
from pipelines.eval.probe import heldout_token_lists, max_positions, probe_model
from pipelines.world.base_model import join_documents
from pipelines.world.tokenizer import document_separator_id

log = logging.getLogger(__name__)
DECODE_ROOM = 128  # positions kept free after a prompt: the longest lead and answer (RULER: 128)


class PromptBranches:
    """A prompt run once, then continued along several branches packed into one row: each
    branch token attends to the prompt and to its own branch's earlier tokens only (a 4D mask,
    positions counted per branch), so no branch sees another and the prompt's cache is never
    copied per branch. reset() drops every branch."""

    def __init__(self, model, prompt_ids: list[int]):
        from transformers import DynamicCache

        self.model, self.device = model, next(model.parameters()).device
        self.cache = DynamicCache(config=model.config)
        ids = torch.tensor([prompt_ids], device=self.device)
        model(input_ids=ids, past_key_values=self.cache, logits_to_keep=1)
        self.prompt_len, self.owner = len(prompt_ids), torch.empty(0, dtype=torch.long)

    def extend(self, pieces: list[tuple[int, list[int]]]) -> list[torch.Tensor]:
        """Append tokens to branches ((branch, tokens) pairs); each piece's logits (float32)."""
        new = torch.tensor([b for b, toks in pieces for _ in toks])
        ids = torch.tensor([[t for _, toks in pieces for t in toks]], device=self.device)
        owners = torch.cat([self.owner, new])
        old = len(self.owner)
        rows = torch.arange(len(new))[:, None]
        cols = torch.arange(len(owners))[None, :]
        branch = (new[:, None] == owners[None, :]) & (cols <= old + rows)
        prompt = torch.ones(len(new), self.prompt_len, dtype=torch.bool)
        mask = torch.cat([prompt, branch], dim=1)[None, None].to(self.device)
        depth = branch.sum(dim=1) - 1  # earlier tokens of the same branch
        pos = (self.prompt_len + depth)[None].to(self.device)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos,
                         past_key_values=self.cache).logits[0].float()  # fmt: skip
        self.owner = owners
        sizes = [len(toks) for _, toks in pieces]
        return list(torch.split(out, sizes))

    def reset(self) -> None:
        if len(self.owner):
            self.cache.crop(-len(self.owner))
        self.owner = torch.empty(0, dtype=torch.long)


def _greedy(branches: PromptBranches, leads: list[list[int]], max_new: int, eos: int):
    """Greedy continuation of prompt + each lead, all leads decoded together."""
    logits = branches.extend(list(enumerate(leads)))
    out, active = [[] for _ in leads], list(range(len(leads)))
    for step in range(max_new):
        nxt = {b: int(logits[i][-1].argmax()) for i, b in enumerate(active)}
        active = [b for b in active if nxt[b] != eos]
        for b in active:
            out[b].append(nxt[b])
        if not active or step == max_new - 1:
            break
        logits = branches.extend([(b, [nxt[b]]) for b in active])
    branches.reset()
    return out


def _option_logprobs(branches: PromptBranches, pairs: list[tuple[list[int], list[int]]]):
    """Mean log-probability of each option's tokens after the prompt and its lead."""
    logits = branches.extend([(i, lead + option) for i, (lead, option) in enumerate(pairs)])
    branches.reset()
    out = []
    for piece, (lead, option) in zip(logits, pairs, strict=True):
        logp = F.log_softmax(piece[len(lead) - 1 : -1], dim=-1)  # i predicts token i + 1
        target = torch.tensor(option, device=logp.device).unsqueeze(-1)
        out.append(float(logp.gather(-1, target).mean()))
    return out


def gold_credit(scores) -> float:
    """1 when the gold option (scores[0]) ranks strictly first, 1/k when k options tie for
    first with it, else 0: a scorer that cannot tell the options apart scores chance exactly."""
    top = max(scores)
    return 1.0 / sum(s == top for s in scores) if scores[0] == top else 0.0


@torch.no_grad()
def score_sample(model, tokenizer, sample: EvalSample, generate: bool = True) -> dict:
    """{"exact", "likelihood", "generation"} of one sample (module docstring). generate=False
    skips the greedy decoding (exact = nan): the likelihood score alone, at a fraction of the
    cost, for the calibration controls."""
    model.eval()
    eos = document_separator_id(tokenizer)
    branches = PromptBranches(model, sample.prompt_ids)
    leads = list(dict.fromkeys(tuple(q.lead) for q in sample.queries))  # distinct, in order
    budget = max(q.max_new_tokens for q in sample.queries)
    text, exact = {}, [float("nan")]
    if generate:
        tokens = _greedy(branches, [list(x) for x in leads], budget, eos)
        text = {lead: tokenizer.decode(t) for lead, t in zip(leads, tokens, strict=True)}
        exact = [q.answer.lower() in text[tuple(q.lead)].lower() for q in sample.queries]
    asked = [q for q in sample.queries if q.options]
    pairs = [(q.option_lead or q.lead, o) for q in asked for o in q.options]
    logps = _option_logprobs(branches, pairs)
    ranked, at = [], 0
    for q in asked:
        scores, at = logps[at : at + len(q.options)], at + len(q.options)
        ranked.append(gold_credit(scores))
    return {
        "exact": float(np.mean(exact)),
        "likelihood": float(np.mean(ranked)),
        "generation": " | ".join(text.values()),
    }


def builder_for(tokenizer, corpus_dir: Path, cfg: EvalSection) -> TaskBuilder:
    """The suite's sample builder over the corpus's held-out documents."""
    docs = heldout_token_lists(corpus_dir, tokenizer)
    stream = join_documents(docs, document_separator_id(tokenizer))
    texts = tokenizer.batch_decode(docs)
    words = [w for text in texts for w in re.findall(r"\b[a-z]+\b", text)]
    return TaskBuilder(tokenizer, stream, words, cfg.options, cfg.seed)


def run_suite(model, tokenizer, builder: TaskBuilder, cfg: EvalSection, desc: str = "eval"):
    """Every task at every length: (scores {task: {length: {...}}}, per-sample rows)."""
    rows = []
    jobs = [(t, n) for t in cfg.tasks for n in cfg.lengths]
    with tqdm(total=len(jobs) * cfg.samples, desc=desc, unit="sample") as bar:
        for task, length in jobs:
            for i in range(cfg.samples):
                sample = builder.sample(task, length, i, cfg.samples)
                result = score_sample(model, tokenizer, sample)
                rows.append({"task": task, "variant": sample.variant, "length": length,
                             "index": i, "depth": sample.depth,
                             "answers": [q.answer for q in sample.queries], **result})  # fmt: skip
                bar.update()
    scores: dict = {}
    for r in rows:
        cell = scores.setdefault(r["task"], {}).setdefault(str(r["length"]), [])
        cell.append((r["exact"], r["likelihood"]))
    for by_length in scores.values():
        for length, values in by_length.items():
            exact, lik = np.mean(values, axis=0)
            by_length[length] = {"exact": round(exact, 4), "likelihood": round(lik, 4),
                                 "n": len(values)}  # fmt: skip
    return scores, rows


def averages(scores: dict, lengths) -> dict:
    """Mean over tasks per length: {length: {"exact", "likelihood"}}."""
    out = {}
    for n in map(str, lengths):
        cells = [by_length[n] for by_length in scores.values() if n in by_length]
        out[n] = {
            k: round(float(np.mean([c[k] for c in cells])), 4) for k in ("exact", "likelihood")
        }
    return out


def evaluate_model(model_dir, corpus_dir, cfg: EvalSection, out_dir, *, tokenizer_dir=None,
                   heldout_context: int = 512, heldout_tokens: int = 40_000) -> dict:  # fmt: skip
    """Evaluate one HF model; write eval.json and eval_samples.parquet into out_dir (reused when
    eval.json exists with the same settings)."""
    from transformers import AutoModelForCausalLM

    from pipelines.world.tokenizer import load_tokenizer

    out_dir = Path(out_dir)
    settings = {"model_dir": str(model_dir), "eval": cfg.__dict__}
    done = out_dir / "eval.json"
    if done.is_file() and json.loads(done.read_text()).get("settings") == settings:
        return json.loads(done.read_text())
    limit = max_positions(model_dir)
    lengths = [n for n in cfg.lengths if n + DECODE_ROOM <= limit]
    start = time.perf_counter()
    tokenizer = load_tokenizer(tokenizer_dir or model_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).to(device)
    run_cfg = EvalSection(**{**cfg.__dict__, "lengths": lengths})
    builder = builder_for(tokenizer, Path(corpus_dir), run_cfg)
    scores, rows = run_suite(
        model, tokenizer, builder, run_cfg, desc=f"eval {Path(model_dir).name}"
    )
    probe = probe_model(
        model_dir, corpus_dir, [n - SPAN for n in lengths], tokenizer_dir=tokenizer_dir,
        samples=cfg.copy_samples, seed=cfg.seed, heldout_context=heldout_context,
        heldout_tokens=heldout_tokens,
    )  # fmt: skip
    result = {
        "settings": settings,
        "lengths": lengths,
        "tasks": scores,
        "average": averages(scores, lengths),
        "long_copy_gain": probe["gain"],
        "heldout_ppl": probe["heldout_ppl"],
        "eval_s": round(time.perf_counter() - start, 1),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out_dir / "eval_samples.parquet")
    write_json_atomic(done, result, indent=2)  # eval.json appears complete or not at all
    log.info("eval %s: %s (%.0f s)", model_dir, _summary(result), result["eval_s"])
    return result


def _summary(result: dict) -> str:
    avg = result["average"]
    return ", ".join(f"{n}: {v['likelihood']:.2f}/{v['exact']:.2f}" for n, v in avg.items()) + (
        f" (likelihood/exact); held-out ppl {result['heldout_ppl']:.1f}"
    )
