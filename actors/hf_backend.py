"""Scoring backend on transformers: the model body gives final hidden states; lm_head is separate.

The body (`model.model`) is run without the lm_head, so no T x V logits are ever built; the
entropy math applies the lm_head weight in chunks (pipelines/core/entropy.py). Sequences run one by
one: on CPU batching gains little, and unpadded inputs are exact with no masking subtleties.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from actors.model_architecture import architecture
from pipelines.core.records import WeightPayload

log = logging.getLogger(__name__)


class HFBackend:
    """PolicyBackend on a transformers causal LM (float32 on CPU, or the given device)."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", version: int = 0) -> None:
        self.device = torch.device(device)
        self.model_dir = str(model_dir)
        self.model = self._load(self.model_dir)
        self.version = version

    def _load(self, model_dir: str):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        return model.to(self.device).eval()

    @torch.no_grad()
    def hidden_states(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        out = []
        for ids in sequences:
            x = torch.tensor([ids], dtype=torch.long, device=self.device)
            h = self.model.model(input_ids=x).last_hidden_state[0]  # post-norm, lm_head input
            out.append(h.float().cpu())
        return out

    def lm_head_weight(self) -> torch.Tensor:
        # Tied embeddings: the output embedding *is* the input embedding matrix.
        return self.model.get_output_embeddings().weight.detach().float().cpu()

    def load_weights(
        self, source: str | Path | WeightPayload | dict[str, torch.Tensor], version: int
    ) -> None:
        """A model dir (new config too, e.g. a raised RoPE base), a WeightPayload (config and
        tensors, from the object-store or collective transport), or a state_dict of this model."""
        if isinstance(source, str | Path):
            self._load_dir(str(source))
            self.model_dir = str(source)
        elif isinstance(source, WeightPayload):
            self._load_payload(source)
        else:
            self._load_state_dict(source)
        self.version = version

    def _use_config(self, config) -> None:
        """Rebuild the model when the config changed (a stage raises the RoPE base)."""
        if architecture(config.to_dict()) != architecture(self.model.config.to_dict()):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            self.model = model.to(self.device).eval()

    def _load_dir(self, model_dir: str) -> None:
        """safetensors are memory-mapped: on CPU the parameters *are* the page-cache pages of the
        checkpoint the trainer just wrote, shared by every actor on the node, copied by none."""
        from safetensors.torch import load_file
        from transformers import AutoConfig

        files = sorted(Path(model_dir).glob("*.safetensors"))
        if not files:  # e.g. a .bin checkpoint: the ordinary (copying) loader
            self.model = self._load(model_dir)
            return
        self._use_config(AutoConfig.from_pretrained(model_dir))
        state = {k: v for f in files for k, v in load_file(str(f)).items()}
        self._load_state_dict(state, assign=self._can_adopt(state))

    def _load_payload(self, payload: WeightPayload) -> None:
        from transformers import AutoConfig

        config = dict(payload.config)
        self._use_config(AutoConfig.for_model(config.pop("model_type"), **config))
        state = payload.state
        if payload.wire == "numpy":
            from cluster.transport_object_store import from_wire

            # On CPU the parameters become the shared object-store arrays themselves (the object
            # stays pinned while we hold it).
            state = from_wire(state)
        self._load_state_dict(state, assign=self._can_adopt(state))

    def _can_adopt(self, state: dict[str, torch.Tensor]) -> bool:
        """Tensors can become the parameters as they are (no copy) when they already have the
        model's device and dtype; scoring never writes a parameter, so shared memory is safe."""
        return self.device.type == "cpu" and all(t.dtype == torch.float32 for t in state.values())

    def _load_state_dict(self, state: dict[str, torch.Tensor], assign: bool = False) -> None:
        result = self.model.load_state_dict(state, strict=False, assign=assign)
        tied = {"lm_head.weight"} if self.model.config.tie_word_embeddings else set()
        missing = set(result.missing_keys) - tied
        if missing or result.unexpected_keys:
            raise ValueError(
                f"state_dict does not fit the model: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(result.unexpected_keys)[:5]}"
            )
        if self.model.config.tie_word_embeddings:
            self.model.tie_weights()
