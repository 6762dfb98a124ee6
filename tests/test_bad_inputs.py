"""Bad input, given the way a new user gives it: every case ends in ONE clear line on stderr
('error: ...' saying what was wrong, where, and what to do), exit code 2, no traceback, and
whatever earlier runs wrote is left byte for byte intact.

Each case is the real command line (`python -m pipelines.cli ...`, joined to the test's Ray)
on the test profile, over an output directory that already holds an earlier run's outputs. The
full disk is simulated in-process (a patched write: the only mock the suite allows)."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from one_stage import COMPARE, ONE_STAGE

from pipelines.cli import main

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Case:
    command: list[str]  # subcommand and its --set overrides (the output/cache dirs are added)
    says: list[str]  # phrases the one error line must contain
    cache: Path | None = None  # a cache dir of the case's own (default: the shared one)
    output: Path | None = None  # an output dir of the case's own (default: the earlier run's)


def _snapshot(*roots: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for root in roots
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def earlier_run(tmp_path, tiny_world):
    """An output dir holding an earlier run's ingested corpus (run.name 'test')."""
    out = tmp_path / "out"
    shutil.copytree(tiny_world.corpus_dir, out / "test" / "corpus")
    return out


@pytest.fixture
def own_cache(tmp_path, tiny_world, test_config):
    """A copy of the content-addressed cache this profile uses (pi_0 and its index, built here
    when no earlier test has), to damage."""
    from pipelines.world.build_index import build_index, cached_index_dir

    cache = tmp_path / "cache"
    corpus, model = tiny_world.corpus_dir, Path(tiny_world.model_dir)
    index_dir = cached_index_dir(test_config.index, test_config.run.cache_dir, corpus, model)
    build_index(index_dir, corpus, model, test_config.index, test_config.run.seed)
    for src in (model, index_dir):
        shutil.copytree(src, cache / src.name)
    return cache, cache / index_dir.name


def _run_cli(case: Case, output: Path, ray_address: str) -> subprocess.CompletedProcess:
    dirs = [
        f"run.output_dir={case.output or output}",
        f"run.cache_dir={case.cache or REPO / 'runs' / 'cache'}",
    ]
    sets = [f"cluster.address={ray_address}", *dirs]
    command, *overrides = case.command
    args = [command, "--config", "configs/test.yaml", *overrides]
    for s in sets:
        if not any(o.startswith(s.split("=")[0] + "=") for o in overrides):
            args += ["--set", s]
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_one_clear_line(code: int, stderr: str, says: list[str]) -> None:
    assert code == 2, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-3000:]
    print(errors[0])  # pytest -s shows each case's line (the note lists them)
    for phrase in says:
        assert phrase in errors[0], errors[0]


def _corpus(tmp_path: Path, files: dict[str, bytes]) -> str:
    d = tmp_path / "corpus-in"
    d.mkdir()
    for name, data in files.items():
        (d / name).write_bytes(data)
    return f"corpus.source={d}"


def _parquet_without_text(tmp_path: Path) -> bytes:
    path = tmp_path / "body.parquet"
    pq.write_table(pa.table({"body": ["a long enough document " * 20]}), path)
    return path.read_bytes()


def _ingest(tmp_path, files):
    return ["ingest", "--set", _corpus(tmp_path, files)]


CORPUS_CASES = {
    "empty corpus directory": (lambda t: _ingest(t, {}), ["has no files"]),
    "only binary files": (
        lambda t: _ingest(t, {"a.txt": b"\x00\x01\x02" * 400, "b.jsonl": b"\x00" * 300}),
        ["no usable document", "binary file"],
    ),
    "non-UTF-8 text": (
        lambda t: _ingest(t, {"latin.txt": "caf\u00e9 ".encode("latin-1") * 300}),
        ["no usable document", "not UTF-8", "re-encode as UTF-8"],
    ),
    "a 10 MB single-line document": (
        lambda t: _ingest(t, {"big.txt": b"word " * (2 * 1024 * 1024)}),
        ["no usable document", "1 longer than corpus.max_chars"],
    ),
    "a malformed jsonl line": (
        lambda t: _ingest(t, {"docs.jsonl": b'{"text": "unterminated\n'}),
        ["no usable document", "docs.jsonl:1: malformed JSON line"],
    ),
    "parquet without the text column": (
        lambda t: _ingest(t, {"body.parquet": _parquet_without_text(t)}),
        ["no usable document", "no column 'text' (set corpus.text_field)"],
    ),
}

CONFIG_CASES = {
    "unknown config key": (
        ["--set", "stages.nonsense=1"],
        ["unknown config key 'stages.nonsense'"],
    ),
    "wrong type": (["--set", "screen.alpha=lots"], ["'screen.alpha' = 'lots'", "a number"]),
    "negative size": (["--set", "index.top_k=-3"], ["'index.top_k' = -3 is out of range"]),
    "a stage seq_len below the base context": (
        ["--set", "stages.seq_lens=[128, 1024]"],
        ["'stages.seq_lens' = [128, 1024]", "pretrain.seq_len = 512"],
    ),
    "seq_lens and rope_thetas of different lengths": (
        ["--set", "stages.rope_thetas=[20000.0]"],
        ["'stages.rope_thetas' must have one entry per stage"],
    ),
    "tau_neg above tau_pos": (
        ["--set", "verify.tau_pos=0.1", "--set", "verify.tau_neg=0.5"],
        ["'verify.tau_neg' must be <= verify.tau_pos"],
    ),
    "an output directory that cannot be written": (
        ["--set", "run.output_dir=/proc/forbidden"],
        [
            "'run.output_dir' = '/proc/forbidden' is not a writable directory",
            "--set run.output_dir=",
        ],
    ),
    "a Ray address that does not answer": (
        ["--set", "cluster.address=127.0.0.1:1", "--set", "cluster.connect_timeout_s=5"],
        ["cluster.address '127.0.0.1:1' does not answer", "ray start --head"],
    ),
}


@pytest.mark.parametrize("name", sorted(CORPUS_CASES))
def test_a_bad_corpus_is_one_line_and_the_earlier_corpus_is_kept(
    name, tmp_path, earlier_run, ray_local
):
    make, says = CORPUS_CASES[name]
    before = _snapshot(earlier_run)
    proc = _run_cli(
        Case(make(tmp_path), says), earlier_run, ray_local.get_runtime_context().gcs_address
    )
    assert_one_clear_line(proc.returncode, proc.stderr, says)
    assert _snapshot(earlier_run) == before


@pytest.mark.parametrize("name", sorted(CONFIG_CASES))
def test_a_bad_config_or_place_is_one_line_before_any_work(name, earlier_run, ray_local):
    overrides, says = CONFIG_CASES[name]
    before = _snapshot(earlier_run)
    proc = _run_cli(Case(["run", *overrides], says), earlier_run, "")
    assert_one_clear_line(proc.returncode, proc.stderr, says)
    assert _snapshot(earlier_run) == before


def _model_without_tokenizer(tmp_path: Path, base: Path) -> Path:
    d = tmp_path / "no-tokenizer"
    d.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(base / name, d / name)
    return d


def _model_with_head_dim_16(tmp_path: Path, base: Path) -> Path:
    """A real (random-init) Qwen2 whose 4 heads of 16 dimensions vLLM's CPU kernels lack."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    d = tmp_path / "head-dim-16"
    tokenizer = AutoTokenizer.from_pretrained(base)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=128,
        max_position_embeddings=512,
    )
    Qwen2ForCausalLM(config).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


MODEL_CASES = {
    "missing model directory": (
        lambda t, base: t / "no-such-model",
        [],
        ["model.path", "does not exist"],
    ),
    "a model directory without tokenizer files": (
        _model_without_tokenizer,
        [],
        ["cannot load a tokenizer from", "no-tokenizer"],
    ),
    "a model vLLM cannot run on CPU (head_dim 16)": (
        _model_with_head_dim_16,
        ["--set", "screen.backend=vllm"],
        ["'screen.backend' = 'vllm' cannot run this model on CPUs", "head size 16"],
    ),
}


@pytest.mark.parametrize("name", sorted(MODEL_CASES))
def test_a_bad_model_is_one_line_before_any_work(
    name, tmp_path, earlier_run, tiny_world, ray_local
):
    make, extra, says = MODEL_CASES[name]
    model = make(tmp_path, Path(tiny_world.model_dir))
    before = _snapshot(earlier_run)
    command = ["run", "--set", f"model.path={model}", *extra]
    proc = _run_cli(Case(command, says), earlier_run, ray_local.get_runtime_context().gcs_address)
    assert_one_clear_line(proc.returncode, proc.stderr, says)
    assert _snapshot(earlier_run) == before
    assert not (earlier_run / "test" / "stages").exists()  # nothing started


def _corrupt_faiss(index_dir: Path) -> list[str]:
    path = index_dir / "shard-00000.faiss"
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64  # same size, other bytes
    path.write_bytes(bytes(data))
    return ["shard-00000.faiss' is corrupt (sha256 differs", "policylong build-index"]


def _other_embedder(index_dir: Path) -> list[str]:
    manifest = json.loads((index_dir / "manifest.json").read_text())
    manifest["embedder"] = "all-mpnet-base-v2"
    (index_dir / "manifest.json").write_text(json.dumps(manifest))
    return ["built with embedder 'all-mpnet-base-v2'", "index.embedder is 'all-MiniLM-L6-v2'"]


@pytest.mark.parametrize(
    "damage",
    [_corrupt_faiss, _other_embedder],
    ids=["corrupt FAISS file", "index of another embedder"],
)
def test_a_bad_index_is_one_line_and_nothing_else_changes(
    damage, earlier_run, own_cache, ray_local
):
    cache, index_dir = own_cache
    says = damage(index_dir)
    before = _snapshot(earlier_run, cache)
    proc = _run_cli(
        Case(["run"], says, cache=cache), earlier_run, ray_local.get_runtime_context().gcs_address
    )
    assert_one_clear_line(proc.returncode, proc.stderr, says)
    assert _snapshot(earlier_run, cache) == before


def _delete_checkpoint(model_dir: Path) -> list[str]:
    shutil.rmtree(model_dir)
    return ["stage 0 is marked complete but its checkpoint", "is missing", "rerun to redo stage 0"]


def _truncate_checkpoint(model_dir: Path) -> list[str]:
    path = model_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return ["stage 0's checkpoint file", "is truncated or corrupt", "rerun to redo stage 0"]


@pytest.mark.parametrize(
    "damage", [_delete_checkpoint, _truncate_checkpoint], ids=["missing", "truncated"]
)
def test_a_resume_from_a_broken_stage_checkpoint_is_one_line(
    damage, one_stage_compare, tmp_path, ray_local
):
    """A finished stage 0 (the compare's EntropyLong run) resumed as a two-stage run: stage 1
    would start from stage 0's checkpoint, which is gone or cut short."""
    from pipelines.driver.compare import method_config

    finished = method_config(one_stage_compare[0], "entropylong", 0)
    out = tmp_path / "out"
    shutil.copytree(finished.run_dir, out / finished.run.name)
    says = damage(out / finished.run.name / "stages" / "stage_0" / "model")
    before = _snapshot(out)
    command = ["run", *[a for o in COMPARE if "stages." not in o for a in ("--set", o)]]
    command += ["--set", f"run.name={finished.run.name}", "--set", "stages.method=entropylong"]
    command += [
        a for o in ONE_STAGE if "seq_lens" not in o and "rope" not in o for a in ("--set", o)
    ]
    command += [
        "--set",
        "stages.seq_lens=[512, 1024]",
        "--set",
        "stages.rope_thetas=[20000.0, 80000.0]",
    ]
    proc = _run_cli(Case(command, says), out, ray_local.get_runtime_context().gcs_address)
    assert_one_clear_line(proc.returncode, proc.stderr, says)
    assert _snapshot(out) == before


def test_a_full_disk_while_the_sample_log_is_written_is_one_line_and_keeps_commits(
    load_test_profile, tiny_world, ray_local, tmp_path, monkeypatch, capsys
):
    """The second shard's write fails half-way with ENOSPC: exit 2 with one line, the first
    shard stays committed and readable, the half-written one is not taken for a shard."""
    import pipelines.core.sample_log

    cfg = load_test_profile(
        "run.name=disk-full", "stages.method=concat", *ONE_STAGE, "screen.batch_docs=1"
    )
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, output_dir=str(tmp_path)))
    address = ray_local.get_runtime_context().gcs_address
    cfg = dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, address=address))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    real_write, writes = pq.write_table, []

    def fill_up(table, where, *args, **kwargs):
        if Path(where).parent.name == "samples":
            writes.append(str(where))
        if len(writes) <= 1 or Path(where).parent.name != "samples":
            return real_write(table, where, *args, **kwargs)
        Path(where).write_bytes(b"PAR1 half a shard")
        raise OSError(errno.ENOSPC, "No space left on device", str(where))

    monkeypatch.setattr(pipelines.core.sample_log.pq, "write_table", fill_up)
    code = main(["run", "--config", str(tmp_path / "config.yaml")])
    monkeypatch.undo()
    says = ["no space left on the device writing", "free space", "stage 0 failed in", "rerun"]
    assert_one_clear_line(code, capsys.readouterr().err, says)
    samples = cfg.run_dir / "stages" / "stage_0" / "samples"
    log = pipelines.core.sample_log.SampleLog(samples)
    [first] = log.commits()
    assert log.read(first.name).num_rows == first.rows > 0
    assert not (samples / "manifest.json").exists()
