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


def test_cluster_addresses_ray_resolves_itself_are_not_probed():
    from cluster.runtime import check_reachable

    for address in ("auto", "head-node"):
        check_reachable(address, 0.1)  # no host:port to probe: Ray's own resolution applies
