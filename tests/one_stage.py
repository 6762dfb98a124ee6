"""The smallest run of the test profile that still trains: one stage of 512 tokens, 4 samples."""

ONE_STAGE = [
    "stages.seq_lens=[512]",
    "stages.rope_thetas=[20000.0]",
    "stages.tokens_per_stage=2048",  # 4 samples
    "stages.seed_docs_per_stage=24",
    "screen.batch_docs=4",
]

# `policylong compare` on it, every method, seed 0, at the profile's thresholds (the test pi_0 is
# the shipped copying base), and an evaluation of a few samples.
COMPARE = [
    *ONE_STAGE,
    "eval.samples=2",
    "eval.lengths=[512]",
    "eval.copy_samples=2",
    "eval.loss_gap_samples=2",
    "eval.heldout_gap_samples=2",
]


def run_command(cfg, folder) -> list[str]:
    """`policylong run` as a user starts it (a process of its own), on `cfg` written to
    folder/config.yaml."""
    import sys

    import yaml

    (folder / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    return [sys.executable, "-m", "pipelines.cli", "run", "--config", str(folder / "config.yaml")]
