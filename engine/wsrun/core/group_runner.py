"""Running an atomic group (``group:`` in a recipe): decide what to do with the
destination, probe an existing one, run the group's steps against a staging directory
(the steps see it through a redirect), and commit or abort it, journaling each.

The group's file work (staging, commit, abort, leftovers) is ``wsrun.core.groups``; this
module drives it for a run. ``GroupRunner`` is part of ``wsrun.core.runner.Runner``: it
uses of the run only what it declares below, and runs the group's steps through the
runner's ``run_step`` (which sees the group through ``Runner.group``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from wsrun.core import expr, groups, locks
from wsrun.core.effects import create_dir, move, remove
from wsrun.core.fs import WorldView
from wsrun.core.journal import Journal
from wsrun.core.masking import Masker
from wsrun.core.reports import Events, StepFailed, StepReport, describe_error
from wsrun.core.spool import Chain, is_lazy
from wsrun.core.step import Progress, StepError


class InnerFailed(StepFailed):
    """A step inside an atomic group failed: its own line (naming it and its
    recipe line) is the group's."""


class Differs(Exception):
    """While probing an existing destination, a step of the group found
    something to change."""


@dataclass
class ActiveGroup:
    """The atomic group the runner is inside (see wsrun.core.groups)."""

    key: str
    #: None while probing an existing destination (the steps see it as it is).
    redirect: groups.Redirect | None
    covered: Callable[[str], bool]
    digests: groups.DigestCache | None = None
    probe: bool = False


class GroupRunner:
    """The atomic-group part of a run (mixed into wsrun.core.runner.Runner)."""

    # What the group runner uses of the run (set by Runner.__init__).
    dry_run: bool
    run_id: str
    workdir: str
    env: dict[str, str]
    view: WorldView
    journal: Journal | None
    events: Events
    masker: Masker
    log: Callable[[str], None]
    scope: dict[str, Any]
    seq: int
    #: The atomic group being run, if any (groups do not nest).
    group: ActiveGroup | None
    #: Runs one step of the group (Runner.run_step).
    run_step: Callable[..., StepReport]
    #: A message as it may be printed and journaled (Runner.shown).
    shown: Callable[[str], str]
    #: Where a step's (or a group's) work is reported (Runner.step_progress).
    step_progress: Callable[[str], Progress]

    def group_fields(self, step: dict[str, Any]) -> dict[str, Any]:
        """The ``group:`` mapping with its expressions evaluated and checked."""
        fields: dict[str, Any] = {}
        for name, value in (step.get("group") or {}).items():
            try:
                fields[name] = expr.render(value, self.scope)
            except expr.ExpressionError as e:
                raise StepFailed(f"group.{name}: {e.message}", e) from None
        destination = fields.get("destination")
        if not isinstance(destination, str) or not destination:
            raise StepFailed(f"group.destination: expected a path, got {destination!r}")
        fields["destination"] = os.path.normpath(os.path.join(self.workdir, destination))
        within = fields.get("within")
        if within is not None and not isinstance(within, str):
            raise StepFailed(f"group.within: expected a path or null, got {within!r}")
        fields["within"] = os.path.normpath(os.path.join(self.workdir, within)) if within else None
        if fields.setdefault("on_failure", "remove") not in groups.ON_FAILURE:
            raise StepFailed(
                f"group.on_failure: {fields['on_failure']!r} is not one of remove, keep"
            )
        replace = fields.get("replace", False)
        if not isinstance(replace, bool) and replace is not None:
            raise StepFailed(f"group.replace: expected true or false, got {replace!r}")
        fields["replace"] = bool(replace)
        fields.setdefault("label", "result")
        return fields

    def run_group(
        self, step: dict[str, Any], key: str, path: tuple[Any, ...]
    ) -> tuple[Sequence[dict[str, Any]], dict[str, Any]]:
        """Run an atomic group: decide what to do with the destination, run the
        steps against the staging directory, and rename it into place."""
        fields = self.group_fields(step)
        destination = fields["destination"]
        label = fields["label"]
        held = locks.Held()
        try:
            if not self.dry_run:
                held = locks.acquire(
                    [groups.topmost_missing(destination)],
                    self.run_id,
                    locks.wait_seconds(self.env),
                    self.log,
                )
            decision = groups.decide(self.view, destination, fields["within"])
            if decision.mode == "probe":
                marker = fields.get("marker")
                if marker and marker not in self.view.listdir(destination):
                    raise StepError(
                        f"the destination is not empty and holds no {label}: "
                        "refusing to write into it",
                        path=destination,
                    )
                if self.probe_group(step, key, path, destination):
                    if not self.dry_run:
                        groups.discard_leftovers(destination)
                    return [], {"destination": destination, "state": "unchanged"}
                if not fields["replace"]:
                    hint = f" ({fields['hint']})" if fields.get("hint") else ""
                    raise StepError(
                        f"the destination already holds a different {label}{hint}",
                        path=destination,
                    )
                decision.mode = "replace"
            return self.stage_group(step, key, path, decision, fields["on_failure"] == "keep")
        except (StepError, OSError) as e:
            message, where = describe_error(e)
            raise StepFailed(message, e, where) from None
        finally:
            held.release()

    def group_steps(
        self, step: dict[str, Any], key: str, path: tuple[Any, ...]
    ) -> tuple[Chain[dict[str, Any]], StepReport | None]:
        """Run the steps of a group: their effects, and the report of the one
        that failed (None if all succeeded)."""
        effects: Chain[dict[str, Any]] = Chain()
        for index, inner in enumerate(step.get("steps") or []):
            report = self.run_step("steps", index, inner, within=path, group_key=key)
            effects.add(report.effects)  # a step's spooled effects stay spooled
            if report.status == "failed" and not inner.get("continue_on_error"):
                return effects, report
        return effects, None

    def probe_group(
        self, step: dict[str, Any], key: str, path: tuple[Any, ...], destination: str
    ) -> bool:
        """Run the group's steps against an existing destination as it is, as
        long as none has anything to change: True if none had (the destination
        already holds this very result; the steps' outputs are in scope)."""
        journal, events = self.journal, self.events
        self.journal, self.events = None, Events()  # a probe is not the run's work
        self.group = ActiveGroup(
            key, None, lambda name: groups.inside(name, destination), probe=True
        )
        try:
            _, failed = self.group_steps(step, key, path)
        finally:
            self.group = None
            self.journal, self.events = journal, events
        if failed is None:
            return True
        assert failed.failure is not None
        if isinstance(failed.failure.cause, Differs):
            return False
        raise InnerFailed(failed.failure.message, failed.failure.cause, failed.failure.path)

    def stage_group(
        self,
        step: dict[str, Any],
        key: str,
        path: tuple[Any, ...],
        decision: groups.Decision,
        keep: bool,
    ) -> tuple[Sequence[dict[str, Any]], dict[str, Any]]:
        top, staging, destination = decision.top, decision.staging, decision.destination
        shown: list[dict[str, Any]] = []
        if decision.mode == "new":
            shown = [create_dir(p).to_dict() for p in decision.missing]
        elif decision.mode == "replace":
            shown = [remove(destination).to_dict(), create_dir(destination).to_dict()]
        redirect = groups.Redirect(top, staging)
        digests = None
        if self.dry_run:
            for p in [top, *decision.missing[1:]]:
                self.view.record(create_dir(redirect.staged(p)))
        else:
            self.group_record(key, "begin", {"destination": destination, "staging": staging})
            groups.begin(decision)
            digests = groups.DigestCache(groups.digests_of(top), staging)
        self.group = ActiveGroup(
            key,
            redirect,
            lambda name: groups.inside(name, top) or groups.inside(name, staging),
            digests,
        )
        try:
            effects, failed = self.group_steps(step, key, path)
        finally:
            self.group = None
            if digests is not None:
                digests.close()
        if failed is not None:
            assert failed.failure is not None
            if not self.dry_run:
                kept = groups.abort(decision, keep)
                self.group_record(
                    key, "abort", {"staging": staging, "kept": kept}, failed.failure.message
                )
            raise InnerFailed(failed.failure.message, failed.failure.cause, failed.failure.path)
        if self.dry_run:
            if decision.mode == "replace":
                self.view.record(remove(destination))
            self.view.record(move(staging, top))
        else:
            if decision.mode == "replace":  # the old destination goes: maybe a million files
                task = self.step_progress(key).task("replace")
                try:
                    groups.commit(decision, self.log, digests, lambda n: task.advance(files=n))
                finally:
                    task.close()
            else:
                groups.commit(decision, self.log, digests)
            self.group_record(key, "commit", {"destination": destination})
        state = {"new": "created", "fill": "filled", "replace": "replaced"}[decision.mode]
        return _joined([shown, *effects.parts]), {"destination": destination, "state": state}

    def group_record(
        self, key: str, event: str, outputs: dict[str, Any], error: str | None = None
    ) -> None:
        """Journal a group's begin, commit or abort (real runs), committed at once."""
        if self.journal is None:
            return
        record = f"{key}:{event}"
        self.journal.start_step(self.run_id, record, self.seq, f"group-{event}", [])
        status = "failed" if event == "abort" else "changed"
        self.journal.end_step(
            self.run_id, record, status, [], self.masker.clean(outputs), error and self.shown(error)
        )
        self.journal.flush()


def _joined(parts: list[Sequence[dict[str, Any]]]) -> Sequence[dict[str, Any]]:
    """A group's effects: its steps' one after the other, a list unless one
    step's are spooled (then a lazy chain: a million are not copied)."""
    if any(is_lazy(p) for p in parts):
        return Chain(parts)
    return [e for p in parts for e in p]
