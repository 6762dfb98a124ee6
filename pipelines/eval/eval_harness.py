"""`policylong eval --harness lm-eval`: the field's own harness, lm-evaluation-harness, runs its
RULER tasks on an HF checkpoint at the configured lengths, and the scores land in the model's
eval.json (key "lm_eval") beside ours.

Why both: lm-eval's RULER tasks score generated answers (exact match of the needle values), the
way users of long-context models report them, but a model must generate well to score at all;
our suite (pipelines/eval/evaluate.py) also scores likelihoods, which separate small models that
cannot yet generate. The default tasks are the RULER tasks lm-eval builds without a download
(synthetic haystacks: noise sentences, random words, UUIDs); the others fetch essays or QA data
and need a machine with internet. Installed with the optional extra `pip install -e .[eval]`."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
from pathlib import Path

from pipelines.core.atomic import write_json_atomic
from pipelines.core.config_schema import OFFLINE_RULER_TASKS
from pipelines.core.errors import UserError


def _lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise UserError(
            "--harness lm-eval needs lm-evaluation-harness: install the optional extra "
            "(pip install -e '.[eval]'), then rerun"
        ) from None
    return lm_eval


def harness_scores(results: dict, lengths: list[int]) -> dict[str, dict[str, float]]:
    """{task: {length: score}} from lm-eval's results; it reports -1 for lengths not run."""
    scores = {}
    for task, row in results.items():
        by_length = {str(n): row.get(f"{n},none") for n in lengths}
        scores[task] = {n: float(v) for n, v in by_length.items() if v is not None and v >= 0}
    return scores


def run_harness(model_dir, tasks: list[str], lengths: list[int], limit: int, out_dir) -> dict:
    """Score model_dir with lm-eval's `tasks` at `lengths` (limit samples per task and length)
    and merge {"lm_eval": ...} into out_dir/eval.json (written whole or not at all)."""
    lm_eval = _lm_eval()
    from lm_eval import simple_evaluate

    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # per-request notices, not progress
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    start = time.perf_counter()
    # RULER's NIAH module asks nltk for a tokenizer download at import and prints the refusal of
    # an offline machine to stderr; the synthetic haystacks never use it.
    with contextlib.redirect_stderr(io.StringIO()):
        import lm_eval.tasks.ruler.prepare_niah  # noqa: F401
    scores: dict[str, dict[str, float]] = {}
    for length in lengths:  # one call per length: lm-eval's limit counts a task's first samples,
        # and its RULER datasets list every length in turn, so one call would score only the first
        for task, by_length in _evaluate(simple_evaluate, model_dir, tasks, length, limit).items():
            scores.setdefault(task, {}).update(by_length)
    result = {
        "harness": f"lm-eval {lm_eval.__version__}",
        "metric": "RULER string match of the generated answer (0-1)",
        "limit": limit,
        "tasks": scores,
        "eval_s": round(time.perf_counter() - start, 1),
    }
    _merge_into_eval_json(Path(out_dir), result)
    return result


def _evaluate(simple_evaluate, model_dir, tasks: list[str], length: int, limit: int) -> dict:
    try:
        out = simple_evaluate(
            model="hf",
            model_args=f"pretrained={model_dir},dtype=float32",
            tasks=list(tasks),
            metadata={"max_seq_lengths": [length], "tokenizer": str(model_dir)},
            limit=limit,
            batch_size=1,
            device="cuda" if _cuda() else "cpu",
        )
    except (KeyError, ValueError, FileNotFoundError, OSError, ConnectionError) as e:
        raise UserError(
            f"lm-eval could not run tasks {list(tasks)} on {model_dir} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}): offline, use eval.harness_tasks from "
            f"{list(OFFLINE_RULER_TASKS)}"
        ) from None
    return harness_scores(out["results"], [length])


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _merge_into_eval_json(out_dir: Path, result: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    done = out_dir / "eval.json"
    existing = json.loads(done.read_text()) if done.is_file() else {}
    write_json_atomic(done, existing | {"lm_eval": result}, indent=2)
