"""The exceptions the CLI prints as a single line, no traceback."""

from __future__ import annotations

from contextlib import contextmanager


class UserError(Exception):
    """Bad user input (config, paths, data); the message says what, where and what to do."""


class StepFailed(Exception):
    """A paper step (screen, retrieve, verify, assemble, commit, train) raised."""

    def __init__(self, step: str, cause: BaseException):
        self.step, self.cause = step, cause
        super().__init__(f"{step}: {describe(cause)}")


class StageFailed(Exception):
    """A stage could not finish: the run stops with this one line (exit code 1)."""


def describe(error: BaseException) -> str:
    """'Type: message' of the root cause, one line (a Ray task error carries the remote one)."""
    cause = getattr(error, "cause", None)
    if isinstance(error, StepFailed) or cause is None or not isinstance(cause, BaseException):
        cause = error
    if isinstance(cause, StepFailed):
        return str(cause)
    lines = [x for x in str(cause).strip().splitlines() if x.strip()]
    return f"{type(cause).__name__}: {lines[-1].strip() if lines else ''}"[:300]


@contextmanager
def in_step(name: str):
    """Name the paper step that raised: the run's error line says where it failed."""
    try:
        yield
    except StepFailed:
        raise
    except Exception as e:
        raise StepFailed(name, e) from e
