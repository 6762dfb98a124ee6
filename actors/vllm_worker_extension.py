"""Methods mixed into vLLM's worker process (`worker_extension_cls`), called via collective_rpc.

Every stage raises the RoPE base. vLLM's `reload_weights` does not re-read config.json and the
rotary cos/sin cache is built once at engine start, so without this the engine would keep the old
base (measured: entropies 1.49 off HF) or need a restart (~20 s on CPU, minutes for a big model on
GPU). `set_rope_theta` recomputes the cache of every plain rotary embedding in place.
"""

from __future__ import annotations


class PolicyWorkerExtension:
    def set_rope_theta(self, theta: float) -> int:
        """New RoPE base for every default (unscaled) rotary embedding; returns how many."""
        from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding

        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        updated = 0
        for module in model.modules():
            # Only the plain rotary embedding: scaled variants (YaRN, NTK, ...) derive more
            # than the base from the config, so the backend restarts the engine for those.
            if type(module) is RotaryEmbedding:
                module.base = float(theta)
                cache = module._compute_cos_sin_cache()
                old = module.cos_sin_cache
                module.cos_sin_cache = cache.to(device=old.device, dtype=old.dtype)
                updated += 1
        return updated
