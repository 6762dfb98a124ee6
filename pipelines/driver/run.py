"""The main job (`policylong run`, `make run`): the whole loop, then where its outputs are."""

from __future__ import annotations

import json
import logging

from cluster.runtime import init_ray
from pipelines.core.config import Config

log = logging.getLogger(__name__)


def run(cfg: Config) -> dict:
    from pipelines.driver.stage_driver import run_policylong, stage_dir

    init_ray(cfg.cluster)
    result = run_policylong(cfg)
    last = stage_dir(cfg, len(cfg.stages.seq_lens) - 1)
    summary = {
        "run_dir": str(cfg.run_dir),
        "method": cfg.stages.method,
        "final_checkpoint": str(last / "model") if cfg.stages.train else None,
        "datasets": str(cfg.run_dir / "dataset" / "stage_*"),
        "sample_logs": str(cfg.run_dir / "stages" / "stage_*" / "samples"),
        "report": result["report"],
        "new_work": result["new_work"],
    }
    (cfg.run_dir / "summary.json").write_text(json.dumps(summary | result, indent=2))
    print(json.dumps(summary, indent=2))
    return summary
