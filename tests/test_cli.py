"""The command line: --help everywhere, user mistakes as one line and exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipelines.cli import COMMANDS, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert "--config" in capsys.readouterr().out


def test_bad_override_is_one_line_on_stderr():
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "show-config", "--set", "screen.alpha=lots"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == "error: config key 'screen.alpha' = 'lots' is invalid: expected a number"
    )
    assert "Traceback" not in proc.stderr


def test_show_config_prints_resolved_values(capsys):
    assert main(["show-config", "--set", "verify.tau_pos=0.3"]) == 0
    assert "tau_pos: 0.3" in capsys.readouterr().out


@pytest.mark.parametrize("key", ["run.output_dir", "run.cache_dir"])
def test_unwritable_output_is_one_line_before_any_work(key, tmp_path):
    """A directory nobody can create (under /proc) fails in one line, exit 2, before Ray or the
    corpus are touched; nothing is written under the writable one."""
    other = "run.cache_dir" if key == "run.output_dir" else "run.output_dir"
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", "--config", "configs/test.yaml"]
        + ["--set", f"{key}=/proc/forbidden", "--set", f"{other}={tmp_path / 'ok'}"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith(f"error: config key '{key}' = '/proc/forbidden' is not a")
    assert proc.stderr.strip().endswith(f"choose another with --set {key}=DIR")
    assert not any(p.is_file() for p in (tmp_path / "ok").rglob("*"))


def test_unreachable_cluster_address_is_one_line(tmp_path):
    """Nothing listens on port 1: one error line naming the key and what to do, exit 2, instead
    of Ray's minutes of reconnect warnings (the subprocess timeout only guards against a hang)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", "--config", "configs/test.yaml"]
        + ["--set", "cluster.address=127.0.0.1:1", "--set", "cluster.connect_timeout_s=5"]
        + ["--set", f"run.output_dir={tmp_path}", "--set", f"run.cache_dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("error: cluster.address '127.0.0.1:1' does not answer (")
    assert "cluster.connect_timeout_s" in proc.stderr and "ray start --head" in proc.stderr


def test_cluster_addresses_ray_resolves_itself_are_not_probed():
    from cluster.runtime import check_reachable

    for address in ("auto", "head-node"):
        check_reachable(address, 0.1)  # no host:port to probe: Ray's own resolution applies
