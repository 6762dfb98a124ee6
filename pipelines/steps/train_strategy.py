"""How the train workers share the model: one class per strategy, one small interface.

    ddp    every rank holds the whole model; gradients all-reduced. Rank 0 alone writes the
           resume checkpoint (state.pt) and pi_{k+1}.
    fsdp2  each rank holds a shard of every layer (torch `fully_shard`), parameters gathered
           per layer for compute; bf16 compute with fp32 gradient reduction on GPUs. Resume
           checkpoints are torch.distributed.checkpoint (DCP): every rank writes its own
           shard, in parallel. pi_{k+1} is gathered into a full state dict with every rank
           taking part, and rank 0 writes it.

Whatever the strategy, `full_state_dict` is a collective (every rank calls it) and returns the
plain model's weights on rank 0 (None elsewhere): nothing may run the sharded model on one rank
alone, which is what hung the first FSDP2 attempt.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

STEP_FILE = "step.json"


class DDPStrategy:
    name = "ddp"

    def __init__(self, rank: int):
        self.rank = rank

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(module)

    @staticmethod
    def _inner(model: torch.nn.Module) -> torch.nn.Module:
        return getattr(model, "module", model)  # the module DDP wraps

    def save_checkpoint(self, model, opt, step: int, out: Path) -> bool:
        """This rank's part of the resume checkpoint in `out`; whether it wrote anything."""
        if self.rank != 0:
            return False
        state = {"model": self._inner(model).state_dict(), "optimizer": opt.state_dict()}
        torch.save(state | {"step": step}, out / "state.pt")
        return True

    def load_checkpoint(self, model, opt, src: Path) -> int:
        state = torch.load(src / "state.pt", weights_only=False)
        self._inner(model).load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        return int(state["step"])

    def full_state_dict(self, model) -> dict | None:
        if self.rank != 0:
            return None
        # BlockedCausalLM holds the HF model as `.model`: give back the HF model's own keys.
        return {k.removeprefix("model."): v for k, v in self._inner(model).state_dict().items()}


class FSDP2Strategy:
    name = "fsdp2"

    def __init__(self, rank: int, device: torch.device):
        self.rank, self.device = rank, device

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        module.to(self.device)
        # bf16 compute halves parameter and activation memory on GPUs; gradients are reduced
        # and the optimizer steps in fp32. CPUs keep fp32 throughout (bf16 matmuls are slow).
        mp = (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if self.device.type == "cuda"
            else MixedPrecisionPolicy()
        )
        for layer in module.model.model.layers:  # one all-gather per decoder layer
            fully_shard(layer, mp_policy=mp)
        return fully_shard(module, mp_policy=mp)

    def _state(self, model, opt) -> dict:
        from torch.distributed.checkpoint.state_dict import (
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}

    def save_checkpoint(self, model, opt, step: int, out: Path) -> bool:
        import torch.distributed.checkpoint as dcp

        dcp.save(self._state(model, opt), checkpoint_id=str(out))  # this rank's shard files
        if self.rank == 0:
            (out / STEP_FILE).write_text(json.dumps({"step": step}))
        return True

    def load_checkpoint(self, model, opt, src: Path) -> int:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        state = self._state(model, opt)
        dcp.load(state, checkpoint_id=str(src))
        set_model_state_dict(model, state["model"])
        set_optimizer_state_dict(model, opt, state["optim"])
        return int(json.loads((src / STEP_FILE).read_text())["step"])

    def full_state_dict(self, model) -> dict | None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        full = get_model_state_dict(model, options=options)  # a collective: every rank
        if self.rank != 0:
            return None
        # BlockedCausalLM holds the HF model as `.model`: give back the HF model's own keys.
        return {k.removeprefix("model."): v for k, v in full.items()}


def make_strategy(name: str, rank: int, device: torch.device):
    if name == "fsdp2":
        return FSDP2Strategy(rank, device)
    return DDPStrategy(rank)
