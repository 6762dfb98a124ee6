"""Step 5 — train: Ray Train workers stream a stage's samples from the durable log while
construction is still writing it, and train pi_k into pi_{k+1}.

Global sample order is the log's commit order. Step s uses samples [s*W*B, (s+1)*W*B) (W workers,
B per worker); a worker whose slot is past the end of a finished log trains on a zero-weight copy
so that DDP's all-reduce stays in step. Each checkpoint records the step, so a restarted worker
resumes exactly where it stopped, neither skipping nor repeating a sample. Every worker writes a
ledger line per trained sample: the proof that every logged sample was trained on exactly once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from pipelines.core.atomic import replaced_atomically
from pipelines.core.config import RoleResources, TrainSection
from pipelines.core.records import SYNC_PROBE_FILE
from pipelines.core.sample_log import SampleLog
from pipelines.steps.train_strategy import make_strategy

log = logging.getLogger(__name__)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass
class StageTrainSpec:
    """Everything a train worker needs for one stage (plain data: it is pickled to workers)."""

    stage: int
    init_model_dir: str
    out_model_dir: str
    sample_log_dir: str
    ledger_dir: str
    seq_len: int
    rope_theta: float
    budget_samples: int
    train: dict
    threads: int = 1
    poll_s: float = 0.5
    probe_ids: list[int] | None = None  # fixed probe: its entropies prove the broadcast
    lm_head_chunk_tokens: int = 1024  # entropy tiling of the probe (screen.lm_head_*)
    lm_head_vocab_tile: int = 2048


class ConstructionFailed(RuntimeError):
    """The stage's construction failed: no more samples will come (not a training fault)."""


def _any_rank(flag: bool) -> bool:
    """True on every rank when it is true on any: the ranks stop together, none is left
    waiting in a collective for a rank that has left."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


class SampleStream:
    """The stage's samples in commit order, waiting for construction when it is behind."""

    def __init__(self, root: Path, budget: int, poll_s: float):
        self.log, self.budget, self.poll_s = SampleLog(root), budget, poll_s
        self.index: list[tuple[str, int]] = []  # global position -> (shard, row)
        self.last_position: dict[str, int] = {}  # shard -> its last global position
        self.tables: dict = {}  # shards in use (a worker reads positions in increasing order)
        self.waited_s = 0.0  # time spent waiting for construction (not busy)

    def _refresh(self) -> bool:
        failure = self.log.failure()
        if failure:  # construction failed: no more samples will come
            raise ConstructionFailed(f"construction failed, training stops: {failure}")
        finished = self.log.is_finished()  # read before listing: no commit can be missed
        known = {name for name, _ in self.index}
        for commit in self.log.commits():
            if commit.name not in known:
                self.index.extend((commit.name, i) for i in range(commit.rows))
                self.last_position[commit.name] = len(self.index) - 1
        return finished

    def wait_for(self, n: int) -> int:
        """Block until n samples exist (capped at the budget) or the log is finished."""
        n = min(n, self.budget)
        start = time.perf_counter()
        try:
            while True:
                finished = self._refresh()
                if len(self.index) >= n or finished:
                    return min(len(self.index), self.budget)
                time.sleep(self.poll_s)
        finally:
            self.waited_s += time.perf_counter() - start

    def get(self, position: int) -> dict:
        name, row = self.index[position]
        if name not in self.tables:
            self.tables[name] = self.log.read(name).select(["sample_id", "input_ids"]).to_pylist()
        # Positions only grow: shards wholly behind this one are done with (bounded memory on a
        # stage of billions of tokens).
        for done in [n for n in self.tables if self.last_position[n] < position]:
            del self.tables[done]
        return self.tables[name][row]


class BlockedCausalLM(torch.nn.Module):
    """Causal LM loss with lm_head + cross-entropy in blocks of `block` positions.

    Each block is recomputed in backward (checkpoint), so T x V logits are never held at once:
    at 128K tokens and a 152K vocabulary they would not fit. Wrapped whole by DDP/FSDP.
    """

    def __init__(self, model, block: int):
        super().__init__()
        self.model, self.block = model, block

    def forward(self, input_ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        hidden = self.model.model(input_ids=input_ids).last_hidden_state[:, :-1]
        labels = input_ids[:, 1:]
        lm_head = self.model.lm_head
        total = hidden.new_zeros(())
        for start in range(0, hidden.shape[1], self.block):
            h, y = hidden[:, start : start + self.block], labels[:, start : start + self.block]
            per_row = checkpoint(_block_nll, h, y, lm_head.weight, use_reentrant=False)
            total = total + (per_row * weight).sum()
        return total / (weight.sum().clamp(min=1.0) * labels.shape[1])


def _block_nll(h: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    logits = (h @ w.T).float()
    nll = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
    return nll.view(y.shape).sum(dim=1)


def lr_factor(step: int, total: int, cfg: TrainSection) -> float:
    warmup = int(cfg.warmup_ratio * total)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def load_policy(model_dir: str, rope_theta: float, seq_len: int):
    """pi_k with its RoPE base raised for the stage's context length."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    config.rope_parameters = {**(config.rope_parameters or {}), "rope_theta": rope_theta}
    config.max_position_embeddings = max(config.max_position_embeddings, seq_len)
    return AutoModelForCausalLM.from_pretrained(model_dir, config=config, dtype=torch.float32)


def _ledger_truncate(path: Path, from_step: int) -> None:
    """On resume, forget ledger lines of steps that will be redone."""
    if path.exists():
        keep = [x for x in path.read_text().splitlines() if json.loads(x)["step"] < from_step]
        path.write_text("".join(x + "\n" for x in keep))


def quiet_report_log() -> None:
    """Ray Train's workers log "Reporting training result N: TrainingReport(...)" at INFO for
    every ray.train.report of every rank (each logged step of each stage). Its logger is named
    by its file's path (logging.getLogger(__file__) in ray.train.v2._internal.execution.context),
    not "ray.train...", so LoggingConfig(log_level="WARNING") does not reach it."""
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def train_stage_worker(spec_dict: dict) -> None:
    """The Ray Train worker loop for one stage."""
    import ray.train
    import ray.train.torch

    quiet_report_log()
    spec = StageTrainSpec(**spec_dict)
    cfg = TrainSection(**spec.train)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.stage)
    device = ray.train.torch.get_device()
    strategy = make_strategy(cfg.strategy, rank, device)

    policy = load_policy(spec.init_model_dir, spec.rope_theta, spec.seq_len)
    if cfg.gradient_checkpointing:  # per decoder layer: only layer inputs are kept
        policy.gradient_checkpointing_enable()
    model = strategy.wrap(BlockedCausalLM(policy, cfg.logit_block_tokens))
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
    )
    start_step = 0
    resumed = ray.train.get_checkpoint()
    if resumed:
        with resumed.as_directory() as d:
            start_step = strategy.load_checkpoint(model, opt, Path(d))
    ledgers = Ledgers(Path(spec.ledger_dir), rank, start_step)
    stream = SampleStream(Path(spec.sample_log_dir), spec.budget_samples, spec.poll_s)
    loop_start = time.perf_counter()
    step = _train_loop(spec, cfg, model, opt, strategy, stream, ledgers, start_step, world, device)
    if step is None:
        return  # construction failed: the driver reports its cause; no pi_{k+1}
    loop_s = time.perf_counter() - loop_start
    busy = {"loop_s": loop_s, "waited_s": stream.waited_s, "busy_s": loop_s - stream.waited_s}
    (Path(spec.ledger_dir) / f"rank{rank}_busy.json").write_text(json.dumps(busy))
    full = strategy.full_state_dict(model)  # every rank takes part; rank 0 gets the weights
    if rank == 0:
        policy_out = policy if cfg.strategy == "ddp" else _plain_copy(policy, full)
        _save_hf(policy_out, spec)


class Ledgers:
    """This rank's ledger (every sample it trained, at which step) and rank 0's train log
    (loss and lr per step); on resume, the lines of steps that will be redone are dropped."""

    def __init__(self, root: Path, rank: int, start_step: int):
        root.mkdir(parents=True, exist_ok=True)
        (root / f"rank{rank}.pid").write_text(str(os.getpid()))  # which process is rank r
        self.rank = rank
        self.samples = root / f"rank{rank}.jsonl"
        self.train_log = root / "train_log.jsonl"
        _ledger_truncate(self.samples, start_step)
        if rank == 0:
            _ledger_truncate(self.train_log, start_step)

    def record(self, step: int, positions: list[int], rows: list[dict], loss: float, lr: float):
        now = time.time()
        with self.samples.open("a") as f:
            for p, r in zip(positions, rows, strict=False):
                f.write(json.dumps({"step": step, "pos": p, "sample_id": r["sample_id"], "t": now}))
                f.write("\n")
        if self.rank == 0:
            with self.train_log.open("a") as f:
                f.write(json.dumps({"step": step, "loss": loss, "lr": lr, "t": now}) + "\n")


def _train_loop(spec, cfg, model, opt, strategy, stream, ledgers, step, world, device):
    """Train every committed sample once, from `step`; the final step, or None when
    construction failed."""
    per_step = world * cfg.batch_size
    total_steps = max(1, math.ceil(spec.budget_samples / per_step))
    loss_value = float("nan")
    while step < total_steps:
        try:
            available, failed = stream.wait_for((step + 1) * per_step), False
        except ConstructionFailed:
            available, failed = 0, True
        if _any_rank(failed):
            # Not a training fault: Ray Train must not restart the group for it (minutes of
            # retries); the driver reports construction's own error. pi_{k+1} is not written.
            log.warning(
                "rank %d: construction failed, training stops at step %d", ledgers.rank, step
            )
            return None
        if available <= step * per_step:
            break  # construction finished with fewer samples than the budget
        slots = [step * per_step + ledgers.rank * cfg.batch_size + j for j in range(cfg.batch_size)]
        real = [p for p in slots if p < available]
        rows = [stream.get(p) for p in (real or [step * per_step])]  # zero-weight stand-in
        rows += [rows[0]] * (cfg.batch_size - len(rows))
        weight = torch.tensor([1.0 if j < len(real) else 0.0 for j in range(cfg.batch_size)])
        input_ids = torch.tensor([r["input_ids"] for r in rows], dtype=torch.long)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, total_steps, cfg)
        loss = model(input_ids.to(device), weight.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        loss_value = loss.item()
        ledgers.record(step, real, rows, loss_value, opt.param_groups[0]["lr"])
        step += 1
        if step % cfg.checkpoint_every == 0:
            _report(step, loss_value, model, opt, strategy)
    if step % cfg.checkpoint_every:  # the final position, so a rerun does no new work
        _report(step, loss_value, model, opt, strategy)
    return step


def _report(step: int, loss: float, model, opt, strategy) -> None:
    """A resume checkpoint: each rank hands Ray Train its part (DDP: rank 0's state.pt; FSDP2:
    every rank's DCP shard), which Ray Train gathers into one checkpoint directory."""
    import ray.train

    metrics = {"step": step, "loss": loss}
    with tempfile.TemporaryDirectory() as d:
        if strategy.save_checkpoint(model, opt, step, Path(d)):
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)


def _plain_copy(policy, state_dict: dict):
    """An unsharded fp32 copy of the policy holding `state_dict`: what HF saves and probes."""
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_config(policy.config, dtype=torch.float32)
    plain.load_state_dict(state_dict)
    return plain


def _save_hf(policy, spec: StageTrainSpec) -> None:
    """pi_{k+1} in HF format with its tokenizer: what scorers, verifiers and users load."""
    out = Path(spec.out_model_dir)
    with replaced_atomically(out) as tmp:
        policy.save_pretrained(str(tmp))
        for name in TOKENIZER_FILES:
            src = Path(spec.init_model_dir) / name
            if src.exists():
                shutil.copy(src, tmp / name)
        if spec.probe_ids:
            tiling = (spec.lm_head_chunk_tokens, spec.lm_head_vocab_tile)
            probe = probe_entropies(policy, spec.probe_ids, tiling)
            (tmp / SYNC_PROBE_FILE).write_text(json.dumps(probe))


@torch.no_grad()
def probe_entropies(policy, probe_ids: list[int], tiling: tuple[int, int]) -> dict:
    """The trainer's own entropies of the probe, from the in-memory policy."""
    from pipelines.core.entropy import token_entropies

    policy.eval()
    ids = torch.tensor([probe_ids], device=next(policy.parameters()).device)
    hidden = policy.model(input_ids=ids).last_hidden_state[0]
    # Eager: compiling for one short probe costs seconds at the end of every stage.
    ent = token_entropies(hidden, policy.lm_head.weight, *tiling, compiled=False)[1:]
    return {"probe_ids": probe_ids, "entropies": ent.tolist()}


def train_stage(spec: StageTrainSpec, workers: RoleResources):
    """Run one stage's TorchTrainer on `workers` (resources.trainer); rerunning with the same
    name resumes from its checkpoint."""
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchTrainer

    gpus = workers.gpus
    resources = {"CPU": workers.cpus} | ({"GPU": gpus} if gpus else {}) | workers.resources
    trainer = TorchTrainer(
        train_stage_worker,
        train_loop_config=asdict(spec),
        scaling_config=ScalingConfig(
            num_workers=workers.count, use_gpu=gpus > 0, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=f"stage_{spec.stage}",
            storage_path=str(Path(spec.ledger_dir).parent.resolve() / "ray_train"),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=TrainSection(**spec.train).max_failures),
            # Ray Train narrates every report and checkpoint at INFO; the stage log says what
            # matters (warnings and errors still show).
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    return _fit_off_the_main_thread(trainer, f"train-stage-{spec.stage}")


def _fit_off_the_main_thread(trainer, name: str):
    """trainer.fit() in a daemon thread while the main thread waits. Called on the main thread,
    Ray Train's fit() replaces the SIGINT handler with a "graceful abort" after which the driver
    exits with status 1 and no message (ray 2.60, DataParallelTrainer._register_sigint_handler;
    measured); off it, Ctrl-C stays a KeyboardInterrupt of the driver: one line, exit 130, and
    the rerun resumes from the committed samples and the trainers' ledgers."""
    import threading

    box: dict = {}

    def fit() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as e:  # noqa: BLE001 - re-raised on the main thread below
            box["error"] = e

    thread = threading.Thread(target=fit, name=name, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)  # a short wait: the main thread sees Ctrl-C between the joins
    if "error" in box:
        raise box["error"]
    return box["result"]
