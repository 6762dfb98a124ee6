"""Per-test time limits (pytest-timeout, limits in pyproject.toml and @pytest.mark.timeout) that
fail a hung test by name, including one blocked inside ray.get.

Two things pytest-timeout does not do on its own here:

- Its signal method raises the failure from a SIGALRM handler, but Ray's ray.get only passes on
  KeyboardInterrupt from a handler and swallows anything else, so a test waiting on a hung actor
  never ends (measured: a 45-s limit on `ray.get` of a sleeping actor still hung after 10 min).
  Its thread method ends any hang, but kills the whole run without naming the test. So the signal
  fires first (the test fails by name and the suite goes on: subprocess waits, Python loops), and
  a backstop thread, BACKSTOP_GRACE_S later, prints the test's id and every thread's stack and
  exits the run.
- A session or module fixture that builds a model is paid by the first test that uses it, whose
  own limit knows nothing of it. FIXTURE_BUILD_S adds a fixture's build budget to the limit of a
  test that uses it while it is not built yet, so the limit of every test stays its own work.
"""

from __future__ import annotations

import signal
import threading

import pytest
import pytest_timeout

# Build budgets (s) of the fixtures that train or build something, about 2x what they took on
# 2 loaded cores (clean-clone `make test` runs, issue 32 and the stop notes).
FIXTURE_BUILD_S = {
    # corpus, the shipped base installed and its copy check, the index when runs/cache is cold:
    # 193 s on 2 cores shared with a compare run (it was 1230 s while the base was trained here)
    "tiny_world": 600,
    # the shipped copier (tests/assets/copier) checked and measured: seconds
    "copier_dir": 120,
    # the pi_0 recipe's small model (tests/test_pi0_recipe.py): 239-499 s
    "recipe_metrics": 1000,
    # `policylong compare` of every method on one stage: 249 s
    "one_stage_compare": 600,
    # test_policylong_e2e's two-stage run: 136 s alone, the file 349 s with its kill test
    "e2e": 400,
    # the packaged SmolLM2 GGUF imported into runs/cache: 25 s
    "smollm2_dir": 120,
    # module fixtures that run a stage, build an index or start vLLM engines: each ~100 s or
    # less on 2 cores (FSDP2 reference 97-112 s, retrieval index 100 s, vLLM start ~30-60 s)
    "ddp_stage": 300,
    "fsdp2_stage": 300,
    "stage_ctx": 300,
    "index_run": 300,
    "scorer_pair": 300,
    "scorers": 300,
}
# How long after the signal the backstop waits for the test (and its teardown) to end.
BACKSTOP_GRACE_S = 120


def build_budget_s(item: pytest.Item) -> float:
    """Seconds of FIXTURE_BUILD_S this test pays: the fixtures it uses that are not built yet."""
    defs = item._fixtureinfo.name2fixturedefs
    return sum(
        budget
        for name, budget in FIXTURE_BUILD_S.items()
        if name in defs and defs[name][-1].cached_result is None
    )


def _backstop(item: pytest.Item, settings: pytest_timeout.Settings, grace: float) -> None:
    capman = item.config.pluginmanager.getplugin("capturemanager")
    if capman:  # the line must reach the terminal, not the test's captured output
        capman.suspend_global_capture(item)
    item.config.get_terminal_writer().line(
        f"\nTIMEOUT: {item.nodeid} ran past its {settings.timeout:.0f}-s limit and did not stop"
        f" within {grace:.0f} s more (blocked where the signal cannot reach it, e.g. ray.get on"
        " a hung actor); the run stops here. Stacks follow."
    )
    # pytest-timeout's thread method: captured output, every thread's stack, os._exit(1)
    pytest_timeout.timeout_timer(item, settings)


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: pytest_timeout.Settings):
    limit = settings.timeout + build_budget_s(item)
    settings = settings._replace(timeout=limit)
    use_signal = (
        settings.method == "signal" and threading.current_thread() is threading.main_thread()
    )
    grace = BACKSTOP_GRACE_S if use_signal else 0
    timer = threading.Timer(limit + grace, _backstop, (item, settings, grace))
    timer.daemon = True
    timer.name = f"timeout backstop {item.nodeid}"
    if use_signal:

        def on_alarm(signum, frame):
            __tracebackhide__ = True
            pytest_timeout.timeout_sigalrm(item, settings)

        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, limit)

    def cancel():
        if use_signal:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
        timer.cancel()

    item.cancel_timeout = cancel
    timer.start()
    return True
