"""The suite's per-test time limits (tests/timeouts.py): a hung test fails by name, whether it
waits on a subprocess or inside ray.get, and a fixture's build is paid by the first test only.
Each case runs pytest in a subprocess on a small test file with this suite's timeout hooks."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent


def _pytest(tmp_path: Path, tests: str, grace_s: int = 5) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(f"""
        import sys, time
        import pytest
        sys.path.insert(0, {str(TESTS_DIR)!r})
        import timeouts
        from timeouts import pytest_timeout_set_timer
        timeouts.BACKSTOP_GRACE_S = {grace_s}
        timeouts.FIXTURE_BUILD_S["slow_build"] = 10

        @pytest.fixture(scope="session")
        def slow_build():
            time.sleep(4)
        """)
    )
    # the suite's own settings (pyproject.toml)
    (tmp_path / "pytest.ini").write_text("[pytest]\ntimeout = 600\ntimeout_method = signal\n")
    (tmp_path / "test_cases.py").write_text(textwrap.dedent(tests))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "test_cases.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.timeout(300)
def test_a_hung_subprocess_wait_fails_its_test_by_name_and_the_suite_goes_on(tmp_path):
    proc = _pytest(
        tmp_path,
        """
        import subprocess, sys, pytest

        @pytest.mark.timeout(3)
        def test_hangs():
            subprocess.run([sys.executable, "-c", "import time; time.sleep(600)"])

        def test_after():
            pass
        """,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "FAILED test_cases.py::test_hangs - Failed: Timeout (>3.0s)" in out, out
    assert "PASSED test_cases.py::test_after" in out, out


@pytest.mark.timeout(300)
def test_a_fixture_build_is_added_to_the_limit_of_the_first_test_that_uses_it(tmp_path):
    """slow_build sleeps 4 s, its budget is 10 s: the first test (limit 2 s) passes with it, a
    later test of the same limit that itself takes 4 s fails."""
    proc = _pytest(
        tmp_path,
        """
        import time, pytest

        @pytest.mark.timeout(2)
        def test_first(slow_build):
            pass

        @pytest.mark.timeout(2)
        def test_later(slow_build):
            time.sleep(4)
        """,
    )
    out = proc.stdout + proc.stderr
    assert "PASSED test_cases.py::test_first" in out, out
    assert "FAILED test_cases.py::test_later - Failed: Timeout (>2.0s)" in out, out


@pytest.mark.timeout(300)
def test_a_test_hung_in_ray_get_is_named_and_the_run_ends(tmp_path, ray_local):
    """ray.get swallows the signal's exception; the backstop names the test and ends the run."""
    address = ray_local.get_runtime_context().gcs_address
    proc = _pytest(
        tmp_path,
        f"""
        import time, pytest, ray

        @ray.remote(num_cpus=0)
        class Hung:
            def wait(self):
                time.sleep(600)

        @pytest.mark.timeout(15)
        def test_waits_on_a_hung_actor():
            ray.init(address={address!r}, log_to_driver=False)
            ray.get(Hung.remote().wait.remote())
        """,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "TIMEOUT: test_cases.py::test_waits_on_a_hung_actor ran past its 15-s limit" in out, out
    assert "ray.get(Hung.remote().wait.remote())" in out, out  # the stack of the hang
