"""Methods mixed into vLLM's worker process (`worker_extension_cls`), called via collective_rpc.

Every stage raises the RoPE base. Neither vLLM's `reload_weights` nor its weight-transfer API
re-reads config.json, and the rotary cos/sin cache is built once at engine start, so without this
the engine would keep the old base (measured: entropies 1.49 off HF) or need a restart (~20 s on
CPU, minutes for a big model on GPU). `set_rope_theta` recomputes the cache of every plain rotary
embedding in place.

Importing this module is also the worker process's first contact with our code (vLLM resolves
the extension before it loads the model and builds its weight-transfer engine), so it registers
our weight-transfer engines there (cluster/transport_vllm_gloo.py on CPU, transport_vllm_nccl.py
on GPU) and quiets one false alarm
of vLLM's layerwise reload (below).
"""

from __future__ import annotations

import logging

from cluster import transport_vllm_gloo, transport_vllm_nccl

transport_vllm_gloo.register()
transport_vllm_nccl.register()


class _RotaryCacheNotLoaded(logging.Filter):
    """Drops "RotaryEmbedding: Failed to load weights", logged once per model at every weight
    update (reload_weights and the weight-transfer API alike). Why it is false: vLLM's
    layerwise reload counts every tensor of a layer as loadable, and a rotary embedding's only
    tensor is its cos/sin cache, a buffer computed from the config that no checkpoint holds;
    nothing arrives for it, so vLLM warns and puts the layer's live cache back, which is right
    (set_rope_theta recomputes it when the base changed). The cause sits in vLLM's reload
    bookkeeping (reload/meta.py's SKIP_LOAD_TENSORS lacks computed buffers); we do not patch
    vLLM's internals for a log line. Any other layer's failure still shows: that one is real
    (a weight the sender did not send keeps its old value), and the probe check catches it."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        rotary = bool(args) and str(args[0]).endswith("RotaryEmbedding")
        return not (rotary and record.msg == "%s: Failed to load weights")


logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(
    _RotaryCacheNotLoaded()
)


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
