"""One typed config tree for every step, loaded from a YAML profile in configs/ (the sections
are pipelines/core/config_schema.py).

Every size and threshold of the system lives here. Validation is strict: an unknown key, a wrong
type or an out-of-range value raises ConfigError with one line naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from pipelines.core.config_schema import (  # the sections, importable from here as before
    EVAL_TASKS,
    MOVED_KEYS,
    AssembleSection,
    ClusterSection,
    Config,
    CorpusSection,
    EvalSection,
    IndexSection,
    ModelSection,
    PretrainSection,
    ResourcesSection,
    RoleResources,
    RunSection,
    ScreenSection,
    ShareResources,
    StagesSection,
    TokenizerSection,
    TrainSection,
    VerifySection,
)
from pipelines.core.errors import UserError
from pipelines.core.methods import METHODS

__all__ = [
    "RoleResources",
    "ShareResources",
    "AssembleSection",
    "ClusterSection",
    "Config",
    "ConfigError",
    "CorpusSection",
    "EvalSection",
    "IndexSection",
    "MOVED_KEYS",
    "ModelSection",
    "PretrainSection",
    "ResourcesSection",
    "RunSection",
    "ScreenSection",
    "StagesSection",
    "TokenizerSection",
    "TrainSection",
    "VerifySection",
    "config_from_dict",
    "config_to_yaml",
    "load_config",
    "parse_override",
]


class ConfigError(UserError):
    """A config key is unknown, mistyped or out of range."""


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if typing.get_origin(tp) is dict:
        return "a mapping of names to numbers, e.g. {name: 1}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(
        tp, str(tp)
    )


def _coerce(key: str, value: Any, tp: Any, meta: dict) -> Any:
    origin = typing.get_origin(tp)
    bad = ConfigError(f"config key '{key}' = {value!r} is invalid: expected {_type_name(tp)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin is list:
        if not isinstance(value, list):
            raise bad
        return [
            _coerce(f"{key}[{i}]", v, typing.get_args(tp)[0], meta) for i, v in enumerate(value)
        ]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise bad
        return {k: _coerce(f"{key}.{k}", v, typing.get_args(tp)[1], meta) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise bad
    lo, hi = meta.get("range", (None, None))
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        span = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise ConfigError(f"config key '{key}' = {value!r} is out of range: allowed {span}")
    return value


def _build(cls: type, data: dict, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{prefix.rstrip('.') or '<root>'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    moved = [prefix + k for k in unknown if prefix + k in MOVED_KEYS]
    if moved:
        raise ConfigError(
            f"config key '{moved[0]}' has moved to '{MOVED_KEYS[moved[0]]}': rename it"
        )
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}': allowed keys are {', '.join(fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        tp, key = hints[name], prefix + name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key + ".")
        else:
            kwargs[name] = _coerce(key, value, tp, dict(fields[name].metadata))
    return cls(**kwargs)


# Head sizes vLLM's CPU attention runs (vllm/v1/attention/backends/cpu_attn.py,
# get_supported_head_sizes); a model outside them fails deep inside the engine's start.
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def check_policy_shape(cfg: Config, head_dim: int, base_context: int, base_key: str) -> None:
    """The policy model against the stages and backends, before any work: context extension
    only grows the context, and a vLLM actor on CPUs needs a head size vLLM's CPU kernels run."""
    lens = cfg.stages.seq_lens
    if lens[0] < base_context or lens != sorted(lens):
        raise ConfigError(
            f"config key 'stages.seq_lens' = {lens} must start at or above the base context "
            f"({base_key} = {base_context}) and never shrink: context extension only grows it"
        )
    for role, section in (("scorer", "screen"), ("verifier", "verify")):
        on_cpu = getattr(cfg.resources, role).gpus == 0
        vllm = getattr(cfg, section).backend == "vllm"
        if vllm and on_cpu and head_dim not in VLLM_CPU_HEAD_SIZES:
            raise ConfigError(
                f"config key '{section}.backend' = 'vllm' cannot run this model on CPUs: its "
                f"head size {head_dim} is not one of vLLM's CPU head sizes "
                f"{list(VLLM_CPU_HEAD_SIZES)}; set {section}.backend=hf or give the {role} a GPU"
            )


def _check_cross_fields(cfg: Config) -> None:
    if cfg.model.hidden_size % cfg.model.num_heads:
        raise ConfigError("config key 'model.num_heads' must divide model.hidden_size")
    if cfg.model.num_heads % cfg.model.num_kv_heads:
        raise ConfigError("config key 'model.num_kv_heads' must divide model.num_heads")
    if len(cfg.stages.rope_thetas) != len(cfg.stages.seq_lens):
        raise ConfigError(
            "config key 'stages.rope_thetas' must have one entry per stage "
            f"(stages.seq_lens has {len(cfg.stages.seq_lens)})"
        )
    if not cfg.stages.seq_lens:
        raise ConfigError("config key 'stages.seq_lens' must list at least one stage length")
    if not (cfg.model.path or cfg.model.gguf):  # the embedded base: shape known before any build
        head_dim = cfg.model.hidden_size // cfg.model.num_heads
        check_policy_shape(cfg, head_dim, cfg.pretrain.seq_len, "pretrain.seq_len")
    p = cfg.pretrain
    if p.copy_row_len < 2 * p.copy_span or p.seq_len < 2 * p.copy_distance_span:
        raise ConfigError(
            "config key 'pretrain.copy_span' / 'pretrain.copy_distance_span' must be at most half"
            " of pretrain.copy_row_len / pretrain.seq_len (a span recurs once in its row)"
        )
    if cfg.verify.tau_neg > cfg.verify.tau_pos:
        raise ConfigError("config key 'verify.tau_neg' must be <= verify.tau_pos")
    if cfg.screen.query_before + cfg.screen.query_after < 1:
        raise ConfigError(
            "config key 'screen.query_before' + screen.query_after must be >= 1 "
            "(with both 0 the query is the anchor token alone)"
        )
    for key, values, allowed in (
        ("eval.tasks", cfg.eval.tasks, EVAL_TASKS),
        ("eval.methods", cfg.eval.methods, METHODS),
    ):
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise ConfigError(
                f"config key '{key}' has {bad or 'no entries'}: choose from {', '.join(allowed)}"
            )
    if min(cfg.eval.lengths, default=0) < 64:
        raise ConfigError("config key 'eval.lengths' needs lengths >= 64 tokens")
    if cfg.corpus.min_chars > cfg.corpus.max_chars:
        raise ConfigError("config key 'corpus.min_chars' must be <= corpus.max_chars")
    # 'collective' reaches a vLLM engine through vLLM's weight-transfer API; Ray's object store
    # cannot (cluster/weight_sync.py).
    if cfg.stages.weight_transport == "object_store" and "vllm" in (
        cfg.screen.backend,
        cfg.verify.backend,
    ):
        raise ConfigError(
            "config key 'stages.weight_transport' = 'object_store' needs screen.backend and "
            "verify.backend 'hf' (a vLLM engine takes tensors only through its weight-transfer "
            "API): use 'collective', 'checkpoint_dir' or 'auto'"
        )


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key '{dotted}': '{part}' is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`screen.alpha=2.5` -> ('screen.alpha', 2.5); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def config_from_dict(data: dict) -> Config:
    cfg = _build(Config, data or {}, "")
    _check_cross_fields(cfg)
    return cfg


def _read_profile(p: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A YAML profile as a dict; `extends: other.yaml` (relative to it) is read first and the
    profile's sections are merged over it, key by key."""
    if not p.is_file():
        raise ConfigError(
            f"config file '{p}' not found: pass a YAML profile such as configs/tiny.yaml"
        )
    if p.resolve() in seen:
        raise ConfigError(f"config file '{p}' extends itself through {[str(x) for x in seen]}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file '{p}'{where} is not valid YAML: fix the syntax") from None
    base = data.pop("extends", None)
    if base is None:
        return data
    merged = _read_profile(p.parent / str(base), (*seen, p.resolve()))
    for section, values in data.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section] = merged[section] | values
        else:
            merged[section] = values
    return merged


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML profile (and the one it extends), apply `key=value` overrides, validate."""
    data: dict = _read_profile(Path(path)) if path is not None else {}
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(data, key, value)
    return config_from_dict(data)


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
