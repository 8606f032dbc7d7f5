"""What a run reports: each step's report, the run's, the events the command line hears
as it goes, and a failure as the one line printed to the operator.

Apart from the runner (wsrun.core.runner) so that its parts (the atomic group runner,
wsrun.core.group_runner) and its readers (wsrun.core.output) share them without
importing the runner.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from wsrun.core import expr
from wsrun.core.fs import ContentUnknown
from wsrun.core.step import StepError


class StepFailed(Exception):
    """A step failed; ``str()`` is the one line printed to the operator."""

    def __init__(
        self, message: str, cause: BaseException | None = None, path: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.cause = cause
        self.path = path


@dataclass
class StepReport:
    key: str
    uses: str
    status: str  # ok, changed, skipped, failed
    where: str
    id: str | None = None
    name: str | None = None
    #: A list, or a lazy sequence for a spooled plan (wsrun.core.spool).
    effects: Sequence[dict[str, Any]] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    resumed: bool = False
    failure: StepFailed | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.key,
            "uses": self.uses,
            "status": self.status,
            "effects": self.effects,
        }
        if self.error:
            d["error"] = self.error
        if self.resumed:
            d["resumed"] = True
        return d


@dataclass
class RunReport:
    run_id: str
    recipe: str
    dry_run: bool
    status: str = "ok"
    steps: list[StepReport] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None
    #: The exception behind ``error`` (the worker decides from it whether to retry).
    cause: BaseException | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "run_id": self.run_id,
            "recipe": self.recipe,
            "dry_run": self.dry_run,
            "status": self.status,
            "steps": [s.to_json() for s in self.steps],
            "outputs": self.outputs,
        }
        if self.error:
            d["error"] = self.error
        return d


class Events:
    """What the runner tells the command line as it goes. Defaults do nothing."""

    def step_started(self, key: str, uses: str, where: str) -> None:
        pass

    def step_finished(self, report: StepReport) -> None:
        pass


def describe_error(exc: BaseException) -> tuple[str, str | None]:
    """One line for an exception, and the path it concerns when known."""
    if isinstance(exc, StepError):
        return str(exc), exc.path
    if isinstance(exc, expr.ExpressionError):
        return exc.message, None
    if isinstance(exc, OSError) and exc.strerror:
        path = exc.filename if isinstance(exc.filename, str) else None
        text = f"{path}: {exc.strerror}" if path else exc.strerror
        if isinstance(exc.filename2, str):
            text = f"{path} -> {exc.filename2}: {exc.strerror}"
        return text, path
    if isinstance(exc, ContentUnknown):
        return str(exc), None
    return f"{type(exc).__name__}: {exc}", None
