"""Stage benchmark: does construction overlap training, and how fast is the weight broadcast?

Prints one JSON line:
  stage_wall_s / busiest_actor_busy_s = overlap_ratio   one real PolicyLong stage on local Ray
      (wall time of the stage vs the busy time of its busiest actor: scorer, verifier or a train
      worker; 1.0 = the stage takes exactly as long as its bottleneck, goal <= 1.25)
  broadcast_s / memcpy_s = broadcast_vs_memcpy           the default broadcast (every HF-backend
      actor memory-maps the new checkpoint) until every actor holds it, vs one in-process copy of
      the same bytes (goal <= 2); the object-store transport alongside; first_probe_after_load_s
      vs steady_probe_s shows what the lazy mapping costs at first use. Every version is checked:
      the actors' probe entropies equal a reference model's.

    .venv/bin/python bench/stage.py [--config configs/test.yaml] [--broadcast-hidden 512]
    .venv/bin/python bench/stage.py --smoke     # tiny sizes, one round: checks that it runs

--smoke numbers measure nothing (the test suite runs it so that a refactor cannot break the
bench unseen); --address joins a running Ray instead of starting one.
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


def bench_stage(config: str, out_dir: str, smoke: bool = False) -> dict:
    from pipelines.core.config import load_config
    from pipelines.driver.stage_driver import run_policylong, stage_dir

    tokens, seed_docs = (2048, 16) if smoke else (16384, 160)
    cfg = load_config(
        config,
        [
            f"run.output_dir={out_dir}",
            "run.name=bench-stage",
            "stages.seq_lens=[512]",
            "stages.rope_thetas=[20000.0]",
            f"stages.tokens_per_stage={tokens}",
            f"stages.seed_docs_per_stage={seed_docs}",
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
        "timeline_s": m["timeline_s"],
        "stage_samples": m["construction"].get("samples", 0),
    }


def bench_broadcast(hidden: int, layers: int, num_actors: int, tmp: str, rounds: int = 3) -> dict:
    """pi_1..pi_3 (distinct checkpoints, as the trainer writes them) sent to HF-backend actors by
    the default transport (checkpoint dir) and by the object store, in turns, best of `rounds`."""
    import ray
    import torch

    from actors.scorer import EntropyScorer
    from cluster.transport_checkpoint_dir import CheckpointDirTransport
    from cluster.transport_object_store import ObjectStoreTransport, load_policy_payload
    from pipelines.core.config import Config, ModelSection
    from pipelines.core.entropy import token_entropies
    from pipelines.driver.workers import scorer_spec
    from pipelines.world.base_model import build_model
    from pipelines.world.tokenizer import train_tokenizer

    section = ModelSection(hidden_size=hidden, num_layers=layers, num_heads=hidden // 64)
    section.num_kv_heads = section.num_heads
    dirs = [Path(tmp) / f"policy{v}" for v in range(4)]
    tok = train_tokenizer(["to be or not to be"] * 50, 300, 1, dirs[0])
    model = build_model(section, len(tok), tok.eos_token_id)
    for d in dirs:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.01)  # a new policy per version
        model.save_pretrained(str(d))
        tok.save_pretrained(str(d))
    cfg = Config()  # the defaults: HF backend
    actors = [
        ray.remote(EntropyScorer).options(num_cpus=0.5).remote(scorer_spec(cfg, i), str(dirs[0]))
        for i in range(num_actors)
    ]
    ray.get([a.warmup.remote() for a in actors])
    probe = list(range(1, 200))
    payloads = [load_policy_payload(d) for d in dirs]
    state = payloads[0].state
    weight_bytes = sum(t.numel() * t.element_size() for t in state.values())
    best = {"memcpy": float("inf"), "checkpoint_dir": float("inf"), "object_store": float("inf")}
    first_probe_s = steady_probe_s = float("inf")
    version = 0
    for _ in range(rounds):  # in turns: the machine is noisy
        start = time.perf_counter()
        copy = {k: v.clone() for k, v in state.items()}
        best["memcpy"] = min(best["memcpy"], time.perf_counter() - start)
        del copy
        for name, transport in (
            ("checkpoint_dir", CheckpointDirTransport()),
            ("object_store", ObjectStoreTransport()),
        ):
            version += 1
            d = dirs[1 + version % 3]
            start = time.perf_counter()
            if name == "checkpoint_dir":
                transport.send(d, version, actors)
            else:
                transport.send_payload(payloads[1 + version % 3], version, actors)
            best[name] = min(best[name], time.perf_counter() - start)
            assert ray.get([a.policy_version.remote() for a in actors]) == [version] * num_actors
            # The first use after a checkpoint-dir load pays for mapping the pages: report it.
            start = time.perf_counter()
            got = ray.get([a.probe_entropy.remote(probe) for a in actors])
            probe_s = time.perf_counter() - start
            start = time.perf_counter()
            ray.get([a.probe_entropy.remote(probe) for a in actors])
            steady_probe_s = min(steady_probe_s, time.perf_counter() - start)
            if name == "checkpoint_dir":
                first_probe_s = min(first_probe_s, probe_s)
            # ... and the actors really serve this version's weights.
            ref_model = build_model(section, len(tok), tok.eos_token_id)
            ref_model.load_state_dict(payloads[1 + version % 3].state, strict=False)
            ref_model.tie_weights()
            with torch.no_grad():
                h = ref_model.model(input_ids=torch.tensor([probe])).last_hidden_state[0]
                ref = token_entropies(h, ref_model.lm_head.weight, 1024, compiled=False)[1:]
            diff = max(abs(x - y) for g in got for x, y in zip(g, ref.tolist(), strict=True))
            assert diff < 1e-4, f"an actor does not serve version {version}: {diff}"
    for a in actors:
        ray.kill(a)
    return {
        "weight_bytes": weight_bytes,
        "broadcast_actors": num_actors,
        "broadcast_transport": "checkpoint_dir",
        "broadcast_s": round(best["checkpoint_dir"], 4),
        "memcpy_s": round(best["memcpy"], 4),
        "broadcast_vs_memcpy": round(best["checkpoint_dir"] / best["memcpy"], 2),
        "object_store_s": round(best["object_store"], 4),
        "object_store_vs_memcpy": round(best["object_store"] / best["memcpy"], 2),
        "first_probe_after_load_s": round(first_probe_s, 4),
        "steady_probe_s": round(steady_probe_s, 4),
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
    parser.add_argument("--keep", default="", help="run the stage in this dir and keep it")
    parser.add_argument("--address", default="", help="join this Ray (default: a local one)")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny stage and broadcast model, one round"
    )
    args = parser.parse_args()
    if args.smoke:
        args.broadcast_hidden, args.broadcast_layers = 64, 1

    import ray

    local = {} if args.address else {"num_cpus": 2, "include_dashboard": False}
    ray.init(address=args.address or None, log_to_driver=False, **local)
    with tempfile.TemporaryDirectory() as tmp:
        stage = {} if args.skip_stage else bench_stage(args.config, args.keep or tmp, args.smoke)
        shape = (args.broadcast_hidden, args.broadcast_layers, args.actors, tmp)
        result = stage | bench_broadcast(*shape, rounds=1 if args.smoke else 3)
    print(json.dumps(result | ({"smoke": True} if args.smoke else {})))


if __name__ == "__main__":
    main()
