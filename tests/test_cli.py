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
    from pipelines.core.errors import UserError

    # No host:port to probe: Ray's own resolution applies, nothing is refused here ...
    for address in ("auto", "head-node", "ray://head-node"):
        assert check_reachable(address, 0.1) is None
    # ... while a host:port is probed and one that does not answer is refused
    for address in ("head-node:6379", "ray://127.0.0.1:1"):
        with pytest.raises(UserError, match=f"cluster.address '{address}' does not answer"):
            check_reachable(address, 0.1)


# What a `--help` or a config error must not pay for: each of these costs seconds to import on a
# 2-core machine (torch and transformers alone made `policylong --help` take 8-12 s).
HEAVY_MODULES = ("torch", "ray", "vllm", "transformers", "faiss", "sentence_transformers")

_IMPORT_CHECK = """
import contextlib, io, json, sys
from pipelines.cli import COMMANDS, main
calls = [["--help"]] + [[c, "--help"] for c in sorted(COMMANDS)]
calls.append(["run", "--set", "screen.alpah=2"])  # a config error: exit code 2 before any work
loaded = {}
for argv in calls:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1:]))
    loaded[" ".join(argv)] = [code, heavy]
print(json.dumps(loaded))
"""


@pytest.mark.timeout(120)
def test_help_and_config_errors_import_no_heavy_library():
    import json

    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHECK, *HEAVY_MODULES],
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = json.loads(proc.stdout)
    assert len(loaded) == len(COMMANDS) + 2
    assert loaded["run --set screen.alpah=2"][0] == 2
    assert {argv: heavy for argv, (_, heavy) in loaded.items() if heavy} == {}
