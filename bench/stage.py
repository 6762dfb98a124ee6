"""Stage benchmark: does construction overlap training, and how fast is the weight broadcast?

Prints one JSON line:
  stage_wall_s / busiest_actor_busy_s = overlap_ratio   one real PolicyLong stage on local Ray
      (wall time of the stage vs the busy time of its busiest actor: scorer, verifier or a train
      worker; 1.0 = the stage takes exactly as long as its bottleneck, goal <= 1.25)
  broadcast_s / memcpy_s = broadcast_vs_memcpy           object-store broadcast of a policy to
      the HF-backend actors vs one in-process copy of the same bytes (goal <= 2)

    .venv/bin/python bench/stage.py [--config configs/test.yaml] [--broadcast-hidden 512]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def bench_stage(config: str, out_dir: str) -> dict:
    from pipelines.config import load_config
    from pipelines.policylong import run_policylong, stage_dir

    cfg = load_config(
        config,
        [
            f"run.output_dir={out_dir}",
            "run.name=bench-stage",
            "stages.seq_lens=[512]",
            "stages.rope_thetas=[20000.0]",
            "stages.tokens_per_stage=16384",
            "stages.seed_docs_per_stage=160",
            # The small bases barely use context: demo thresholds, as in configs/tiny.yaml.
            "verify.tau_pos=0.005",
            "verify.tau_neg=0.0",
        ],
    )
    run_policylong(cfg)
    m = json.loads((stage_dir(cfg, 0) / "stage_manifest.json").read_text())
    busy = {**m["actor_busy_s"], **{f"train{i}": b for i, b in enumerate(m["train_busy_s"])}}
    busiest = max(busy, key=busy.get)
    return {
        "stage_wall_s": round(m["wall_s"], 2),
        "busiest_actor": busiest,
        "busiest_actor_busy_s": round(busy[busiest], 2),
        "overlap_ratio": round(m["wall_s"] / busy[busiest], 3),
        "actor_busy_s": {k: round(v, 2) for k, v in busy.items()},
        "stage_samples": m["construction"].get("samples", 0),
    }


def bench_broadcast(hidden: int, layers: int, num_actors: int, tmp: str) -> dict:
    import ray
    import torch

    from actors.scorer import EntropyScorer
    from cluster.transport_object_store import ObjectStoreTransport, load_policy_payload
    from pipelines.base_model import build_model
    from pipelines.config import Config, ModelSection
    from pipelines.tokenizer import train_tokenizer

    model_dir = Path(tmp) / "policy"
    tok = train_tokenizer(["to be or not to be"] * 50, 300, 1, model_dir)
    section = ModelSection(hidden_size=hidden, num_layers=layers, num_heads=hidden // 64)
    section.num_kv_heads = section.num_heads
    build_model(section, len(tok), tok.eos_token_id).save_pretrained(str(model_dir))
    cfg = Config()
    actors = [
        ray.remote(EntropyScorer).options(num_cpus=0.5).remote(cfg, str(model_dir), i)
        for i in range(num_actors)
    ]
    ray.get([a.policy_version.remote() for a in actors])
    state = load_policy_payload(model_dir)["state_dict"]
    weight_bytes = sum(t.numel() * t.element_size() for t in state.values())
    start = time.perf_counter()
    copy = {k: v.clone() for k, v in state.items()}
    memcpy_s = time.perf_counter() - start
    del copy
    start = time.perf_counter()
    ObjectStoreTransport().send(model_dir, 1, actors)
    broadcast_s = time.perf_counter() - start
    assert ray.get([a.policy_version.remote() for a in actors]) == [1] * num_actors
    for a in actors:
        ray.kill(a)
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {
        "weight_bytes": weight_bytes,
        "broadcast_actors": num_actors,
        "broadcast_s": round(broadcast_s, 4),
        "memcpy_s": round(memcpy_s, 4),
        "broadcast_vs_memcpy": round(broadcast_s / memcpy_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--config", default="configs/test.yaml", help="profile for the stage run")
    parser.add_argument("--broadcast-hidden", type=int, default=512, help="broadcast model width")
    parser.add_argument("--broadcast-layers", type=int, default=8, help="broadcast model depth")
    parser.add_argument("--actors", type=int, default=2, help="actors receiving the broadcast")
    parser.add_argument("--skip-stage", action="store_true", help="only the broadcast part")
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        result = {} if args.skip_stage else bench_stage(args.config, tmp)
        result |= bench_broadcast(args.broadcast_hidden, args.broadcast_layers, args.actors, tmp)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
