"""Config validation: every bad input is one clear line naming the key and what is allowed."""

from __future__ import annotations

import pytest

from pipelines.core.config import ConfigError, config_from_dict, load_config

REPO_CONFIGS = ["configs/tiny.yaml", "configs/test.yaml", "configs/qwen2.5-3b-128k.yaml"]


@pytest.mark.parametrize("path", REPO_CONFIGS)
def test_shipped_profiles_load(path):
    cfg = load_config(path)
    assert len(cfg.stages.seq_lens) == len(cfg.stages.rope_thetas)


def test_paper_profile_has_paper_hyperparameters():
    cfg = load_config("configs/qwen2.5-3b-128k.yaml")
    assert cfg.stages.seq_lens[-1] == 131072
    assert cfg.stages.rope_thetas[-1] == 2e8
    assert cfg.train.lr == 4e-5 and cfg.train.betas == [0.9, 0.95]
    assert cfg.train.weight_decay == 0.1 and cfg.train.warmup_ratio == 0.2
    assert cfg.train.schedule == "cosine"


@pytest.mark.parametrize(
    "data, key, allowed",
    [
        ({"screen": {"alpha": "high"}}, "screen.alpha", "a number"),
        ({"screen": {"alhpa": 2.0}}, "screen.alhpa", "allowed keys are backend, alpha"),
        ({"nonsense": {}}, "nonsense", "allowed keys are run, corpus"),
        ({"screen": {"backend": "onnx"}}, "screen.backend", "one of 'hf', 'vllm'"),
        ({"screen": {"max_positions": 0}}, "screen.max_positions", "allowed [1, inf]"),
        ({"verify": {"tau_pos": 3}}, "verify.tau_pos", "allowed [-1.0, 1.0]"),
        ({"index": {"top_k": 2.5}}, "index.top_k", "an integer"),
        (
            {"train": {"gradient_checkpointing": "yes"}},
            "train.gradient_checkpointing",
            "true/false",
        ),
        ({"stages": {"seq_lens": [1024, "2k"]}}, "stages.seq_lens[1]", "an integer"),
        (
            {"stages": {"seq_lens": [1024], "rope_thetas": [1.0, 2.0]}},
            "stages.rope_thetas",
            "one entry per stage",
        ),
        ({"verify": {"tau_pos": 0.1, "tau_neg": 0.5}}, "verify.tau_neg", "<= verify.tau_pos"),
        ({"model": {"hidden_size": 256, "num_heads": 3}}, "model.num_heads", "divide"),
        ({"screen": 5}, "screen", "mapping"),
        (
            {"screen": {"backend": "vllm"}, "stages": {"weight_transport": "object_store"}},
            "stages.weight_transport",
            "use 'collective', 'checkpoint_dir' or 'auto'",
        ),
    ],
)
def test_bad_config_names_key_and_allowed_values(data, key, allowed):
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    message = str(err.value)
    assert f"'{key}'" in message and allowed in message
    assert "\n" not in message


def test_overrides_apply_typed_values():
    cfg = load_config("configs/tiny.yaml", ["screen.alpha=2.5", "stages.seq_lens=[512, 4096]"])
    assert cfg.screen.alpha == 2.5
    assert cfg.stages.seq_lens == [512, 4096]


def test_override_of_unknown_key_is_rejected():
    with pytest.raises(ConfigError, match="unknown config key 'screen.alfa'"):
        load_config("configs/tiny.yaml", ["screen.alfa=2.5", "stages.rope_thetas=[1.0,2.0]"])


def test_missing_and_malformed_files_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("screen: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml' line \d+ is not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize(
    "old, new",
    [
        ("cluster.num_scorers", "resources.scorer.count"),
        ("cluster.cpus_per_train_worker", "resources.trainer.cpus"),
        ("index.cpus_per_embedder", "resources.embedder.cpus"),
    ],
)
def test_a_key_of_an_earlier_version_says_where_it_moved(old, new):
    with pytest.raises(ConfigError, match=f"'{old}' has moved to '{new}'"):
        load_config("configs/tiny.yaml", [f"{old}=1"])


def test_resources_are_one_block_per_role():
    cfg = load_config("configs/test.yaml", ["resources.verifier.count=3"])
    assert (cfg.resources.verifier.count, cfg.resources.verifier.cpus) == (3, 0.25)
    with pytest.raises(ConfigError, match="resources.scorer.gpus"):
        config_from_dict({"resources": {"scorer": {"gpus": -1}}})
