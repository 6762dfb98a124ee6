"""The main job: `policylong run` / `make run`.

Today it prepares the world (corpus, tokenizer, pi_0) and prints where everything is; the stage loop
(screen -> retrieve -> verify -> assemble -> train -> broadcast) extends it as those steps land.
"""

from __future__ import annotations

import json
import logging

from cluster.runtime import init_ray
from pipelines.config import Config, config_to_yaml

log = logging.getLogger(__name__)


def run(cfg: Config) -> dict:
    from pipelines.world import ensure_world

    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / "config.yaml").write_text(config_to_yaml(cfg))
    init_ray(cfg.cluster)
    world = ensure_world(cfg)
    summary = {
        "run_dir": str(cfg.run_dir),
        "corpus_dir": str(world.corpus_dir),
        "base_model_dir": str(world.model_dir),
        "base_metrics": world.metrics,
    }
    (cfg.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary
