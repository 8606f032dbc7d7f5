"""Running a recipe: plan each step, then apply it (or, in a dry run, only plan).

In a real run each step is planned against the disk and applied at once. In a
dry run each step is planned against a WorldView that holds the effects of the
steps planned before it, and nothing is applied: the effects printed are the
effects a real run performs.

A run's parts live beside it: its scope (the names its expressions see, its inputs,
settings and secrets) is ``wsrun.core.scope``, its atomic groups are run by
``wsrun.core.group_runner`` (their file work is ``wsrun.core.groups``), and what it
reports is ``wsrun.core.reports``.

One piece: a step's plan/apply, its retries, loops and called recipes all walk the
same scope, view, journal and locks of one run, and each is a few dozen lines that
read best beside the others.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from wsrun.core import expr, locks
from wsrun.core.effects import Effect, EffectDicts, EffectSpool, effect_dict, outside
from wsrun.core.fs import ContentUnknown, WorldView
from wsrun.core.group_runner import ActiveGroup, Differs, GroupRunner, InnerFailed
from wsrun.core.journal import Journal, JournalError, new_run_id
from wsrun.core.masking import Masker, printable
from wsrun.core.progress import JournalProgress, Tracker
from wsrun.core.recipe import Recipe, is_recipe_ref, resolve
from wsrun.core.reports import Events, RunReport, StepFailed, StepReport, describe_error
from wsrun.core.scope import (
    RunError,
    add_secrets,
    coerce_inputs,
    masked_inputs,
    new_scope,
    resolve_settings,
)
from wsrun.core.settings import Settings
from wsrun.core.spool import Mapped, Spool, is_lazy, sample
from wsrun.core.step import Progress, ProgressTask, StepContext, StepError, load_step

MAX_DEPTH = 20


def parse_timeout(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if value.endswith(unit):
            return float(value[: -len(unit)]) * units[unit]
    return float(value)


class Runner(GroupRunner):
    """Runs one recipe's steps; a step that calls a recipe runs a child Runner
    that shares the world view, the journal and the run id."""

    def __init__(
        self,
        recipe: Recipe,
        inputs: dict[str, Any],
        settings: Settings,
        *,
        dry_run: bool = False,
        run_id: str | None = None,
        journal: Journal | None = None,
        resume: Mapping[str, dict[str, Any]] | None = None,
        events: Events | None = None,
        progress: Progress | None = None,
        log: Callable[[str], None] | None = None,
        workdir: str | None = None,
        env: Mapping[str, str] | None = None,
        view: WorldView | None = None,
        key_prefix: str = "",
        depth: int = 0,
        masker: Masker | None = None,
    ) -> None:
        self.recipe = recipe
        self.inputs = inputs
        self.settings = settings
        self.dry_run = dry_run
        self.run_id = run_id or new_run_id()
        self.journal = journal
        self.resume = resume or {}
        self.events = events or Events()
        #: The run's secrets (shared with the recipes it calls); see wsrun.core.masking.
        self.masker = Masker() if masker is None else masker
        self.progress = _MaskedProgress(progress or Progress(), self.masker)
        #: Keeps each step's newest progress in its journal row (shared with the
        #: recipes this one calls, so the run as a whole is throttled).
        self.journal_progress = JournalProgress(journal, self.run_id) if journal else None
        shown_log = log or (lambda message: None)
        self.log = lambda message: shown_log(self.masker.text(message))
        self.workdir = workdir or os.getcwd()
        self.env = dict(os.environ if env is None else env)
        self.view = view or WorldView()
        self.key_prefix = key_prefix
        self.depth = depth
        self.seq = 0
        #: The atomic group being run, if any (groups do not nest).
        self.group: ActiveGroup | None = None
        self.setting_values, self.settings_shown = resolve_settings(recipe, settings)
        add_secrets(self.masker, recipe, self.setting_values, inputs, None if depth else self.env)
        self.scope = new_scope(
            recipe,
            inputs,
            self.setting_values,
            run_id=self.run_id,
            workdir=self.workdir,
            dry_run=dry_run,
            env=self.env,
        )

    # ---- the run ---------------------------------------------------------------

    def run(self) -> RunReport:
        report = RunReport(self.run_id, self.recipe.name, self.dry_run)
        if self.journal and not self.depth:
            self.journal.start_run(
                self.run_id,
                self.recipe.name,
                self.recipe.path,
                masked_inputs(self.recipe, self.inputs, self.masker),
                self.masker.clean(self.settings_shown),
                self.dry_run,
                self.workdir,
            )
        failure: StepFailed | None = None
        try:
            failure = self.run_section("steps", report)
            if failure is not None and self.recipe.step_list("on_failure"):
                self.scope["error"] = {
                    "message": failure.message,
                    "path": failure.path,
                    "step": report.steps[-1].key if report.steps else None,
                }
                self.run_section("on_failure", report, stop_on_failure=False)
        finally:
            if self.recipe.step_list("finally"):
                if failure is not None:
                    self.scope.setdefault(
                        "error", {"message": failure.message, "path": failure.path}
                    )
                self.run_section("finally", report, stop_on_failure=False)
        if failure is None:
            try:
                report.outputs = {
                    k: expr.render(v, self.scope) for k, v in self.recipe.outputs.items()
                }
            except expr.ExpressionError as e:
                message = self.shown(f"{self.recipe.where('outputs')}: outputs: {e.message}")
                failure = StepFailed(message, e)
        if failure is not None:
            report.status = "failed"
            report.error = failure.message
            report.cause = failure.cause
            if failure.cause is not None and failure.cause.__traceback__ is not None:
                trace = "".join(traceback.format_exception(failure.cause))
                report.traceback = self.masker.text(trace)
        else:
            report.status = "changed" if any(s.status == "changed" for s in report.steps) else "ok"
        if self.journal and not self.depth:
            self.journal.end_run(
                self.run_id, report.status, self.masker.clean(report.outputs), report.error
            )
            self.retain(self.journal)
        return report

    def retain(self, journal: Journal) -> None:
        """Apply the journal's retention setting (at most once a day, see
        wsrun.core.retention). The run itself is done: a problem here is a warning."""
        from wsrun.core.retention import apply_retention

        try:
            apply_retention(journal, self.settings)
        except (JournalError, ValueError) as e:
            self.log(f"warning: journal retention not applied: {e}")

    def shown(self, message: str) -> str:
        """A message as it may be printed and journaled (see wsrun.core.masking)."""
        return printable(self.masker.text(message))

    def run_section(
        self, section: str, report: RunReport, stop_on_failure: bool = True
    ) -> StepFailed | None:
        first: StepFailed | None = None
        for index, step in enumerate(self.recipe.step_list(section)):
            step_report = self.run_step(section, index, step)
            report.steps.append(step_report)
            if step_report.status == "failed" and not step.get("continue_on_error"):
                first = first or step_report.failure
                if stop_on_failure:
                    return first
        return first

    def run_step(
        self,
        section: str,
        index: int,
        step: dict[str, Any],
        within: tuple[Any, ...] = (),
        group_key: str | None = None,
    ) -> StepReport:
        """Run one step (``within``: the path of the group holding it, whose
        key is ``group_key``)."""
        uses = step.get("uses") or "group"
        sid = step.get("id")
        if group_key is not None:
            key = self.key_prefix + (sid or f"{group_key}/#{index + 1}")
        else:
            key = self.key_prefix + (
                sid or (f"{section}[{index}]" if section != "steps" else f"#{index + 1}")
            )
        where = str(self.recipe.where(*within, section, index))
        report = StepReport(
            key=key, uses=uses, status="ok", where=where, id=sid, name=step.get("name")
        )
        self.seq += 1
        # Inside a group every step runs again (a kept staging directory makes
        # that cheap); a finished group is skipped as a whole.
        done = None if self.group is not None else self.resume.get(key)
        recheck = done is not None and "group" not in step and _rechecked_on_resume(uses)
        if done is not None and not recheck:
            if "group" in step:
                for inner in step.get("steps") or []:
                    inner_done = self.resume.get(self.key_prefix + str(inner.get("id")))
                    if inner.get("id") and inner_done is not None:
                        self.scope["steps"][inner["id"]] = {
                            "outputs": inner_done["outputs"],
                            "status": inner_done["status"],
                            "error": None,
                        }
            report.status, report.outputs, report.effects, report.resumed = (
                done["status"],
                done["outputs"],
                done["effects"],
                True,
            )
            self.remember(sid, report)
            self.events.step_finished(report)
            return report
        self.events.step_started(key, uses, where)
        started = time.monotonic()
        if self.journal:
            self.journal.start_step(self.run_id, key, self.seq, uses)
        try:
            if "if" in step and not self.condition(step["if"]):
                report.status = "skipped"
            elif "group" in step:
                effects, outputs = self.run_group(step, key, (*within, section, index))
                report.effects, report.outputs = effects, outputs
                report.status = "changed" if effects else "ok"
            elif "for_each" in step:
                self.run_loop(step, key, report)
            else:
                effects, outputs = self.run_unit(step, key, self.scope)
                report.effects, report.outputs = effects, outputs
                report.status = "changed" if effects else "ok"
                if recheck and not effects and done is not None:  # unchanged: as journaled
                    report.status, report.outputs, report.effects = (
                        done["status"],
                        done["outputs"],
                        done["effects"],
                    )
                    report.resumed = True
        except StepFailed as e:
            report.status = "failed"
            if isinstance(e, InnerFailed):
                report.error = e.message
            else:
                report.error = self.shown(f"step '{key}' ({where}) failed: {e.message}")
            report.failure = StepFailed(report.error, e.cause, e.path)
        report.effects = self.masker.effects(report.effects)  # as printed and journaled
        report.seconds = time.monotonic() - started
        if self.journal:
            status = report.status if not self.dry_run or report.status == "failed" else "planned"
            self.journal.end_step(
                self.run_id,
                key,
                status,
                report.effects,
                self.masker.clean(report.outputs),
                report.error,
            )
        self.remember(sid, report)
        self.events.step_finished(report)
        return report

    def remember(self, sid: str | None, report: StepReport) -> None:
        if sid:
            self.scope["steps"][sid] = {
                "outputs": report.outputs,
                "status": report.status,
                "error": report.error,
            }

    def condition(self, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        try:
            return bool(expr.evaluate(value, self.scope, bare=True))
        except expr.ExpressionError as e:
            raise StepFailed(f"if: {e.message}", e) from None

    def run_loop(self, step: dict[str, Any], key: str, report: StepReport) -> None:
        items = step["for_each"]
        if isinstance(items, str):
            try:
                items = expr.evaluate(items, self.scope, bare=True)
            except expr.ExpressionError as e:
                raise StepFailed(f"for_each: {e.message}", e) from None
        elif isinstance(items, list):
            items = expr.render(items, self.scope)
        if isinstance(items, Mapping):
            items = [{"key": k, "value": v} for k, v in items.items()]
        if is_lazy(items):  # a spooled output such as copy's `files`
            items = list(items)
        if not isinstance(items, (list, tuple)):
            raise StepFailed(f"for_each: expected a list, got {type(items).__name__}")
        results = []
        uses = step["uses"]
        real = not self.dry_run and len(items) > 1 and not is_recipe_ref(uses)
        ahead = load_step(uses) if real else None  # a step type that starts on the next item
        collected: list[dict[str, Any]] = []
        report.effects = collected
        for i, item in enumerate(items):
            scope = {**self.scope, "item": item, "index": i}
            unit = f"{key}[{i}]"
            if hasattr(ahead, "prefetch") and i + 1 < len(items):
                following = {**self.scope, "item": items[i + 1], "index": i + 1}
                self.prefetch(ahead, step, f"{key}[{i + 1}]", following)
            try:
                effects, outputs = self.run_unit(step, unit, scope)
            except StepFailed as e:
                if self.journal and not self.dry_run:  # recorded even if it failed planning
                    self.journal.start_step(self.run_id, unit, self.seq, step["uses"])
                self.end_unit(unit, "failed", [], None, e.message)
                raise
            self.end_unit(unit, "changed" if effects else "ok", effects, outputs)
            collected.extend(effects)
            results.append(outputs)
        report.outputs = {"results": results}
        report.status = "changed" if report.effects else "ok"

    def prefetch(self, module: Any, step: dict[str, Any], key: str, scope: dict[str, Any]) -> None:
        """Let a step type start on the next item of a loop (``prefetch`` in
        wsrun.core.step): advisory, so whatever goes wrong here is left for that
        item's own plan and apply to find and report."""
        try:
            raw = getattr(module, "UNRENDERED", ())
            params = {
                name: value if name in raw else expr.render(value, scope)
                for name, value in (step.get("with") or {}).items()
            }
            module.prefetch(params, self.context(key, None, Progress()))
        except Exception:  # the item's own run reports any error
            return

    def context(self, key: str, deadline: float | None, progress: Progress) -> StepContext:
        """What a step type sees of this run (``progress``: where its work is reported;
        a plain ``Progress()`` shows nothing, for work done ahead of the step)."""
        return StepContext(
            fs=self.view,
            dry_run=self.dry_run,
            run_id=self.run_id,
            workdir=self.workdir,
            step_id=key,
            settings=self.setting_values,
            env=self.env,
            progress=progress,
            log=self.log,
            deadline=deadline,
        )

    def end_unit(
        self,
        unit: str,
        status: str,
        effects: Sequence[dict[str, Any]],
        outputs: Any,
        error: str | None = None,
    ) -> None:
        """End the journal record of one iteration of a loop. A real run records an
        iteration that changes the world before applying it (see plan_apply), and
        one that failed; one that had nothing to do has no record, and this
        changes nothing."""
        if self.journal and not self.dry_run:
            self.journal.end_step(
                self.run_id,
                unit,
                status,
                self.masker.effects(effects),
                self.masker.clean(outputs),
                None if error is None else self.shown(error),
            )

    def run_unit(
        self, step: dict[str, Any], key: str, scope: dict[str, Any]
    ) -> tuple[Sequence[dict[str, Any]], dict[str, Any]]:
        """One execution of a step (one item of a loop): render, plan, apply."""
        params: dict[str, Any] = {}
        raw = (
            ()
            if is_recipe_ref(step["uses"])
            else getattr(load_step(step["uses"]), "UNRENDERED", ())
        )
        templated: set[str] = set()
        for name, value in (step.get("with") or {}).items():
            if name in raw:
                params[name] = value  # the step renders it itself (a template's text)
                continue
            try:
                params[name] = expr.render(value, scope)
                if params[name] is not value:
                    templated.add(name)
            except expr.ExpressionError as e:
                raise StepFailed(f"with.{name}: {e.message}", e) from None
        if is_recipe_ref(step["uses"]):
            return self.run_recipe_step(step["uses"], params, key)
        retry = step.get("retry") or {}
        attempts = 1 if self.dry_run else retry.get("attempts", 1)
        delay = float(retry.get("delay", 1))
        for attempt in range(1, attempts + 1):
            try:
                return self.plan_apply(step, params, key, templated)
            except StepFailed as e:
                if attempt == attempts:
                    if attempts > 1:
                        e.message += f" (after {attempts} attempts)"
                    raise
                self.log(
                    f"step '{key}' failed ({e.message}); retrying in {delay:g}s (attempt {attempt + 1} of {attempts})"
                )
                time.sleep(delay)
                delay *= float(retry.get("backoff", 2))
        raise AssertionError("unreachable")

    def plan_apply(
        self, step: dict[str, Any], params: dict[str, Any], key: str, templated: set[str]
    ) -> tuple[Sequence[dict[str, Any]], dict[str, Any]]:
        module = load_step(step["uses"])
        self.check_params(step["uses"], params, templated)
        deadline = time.monotonic() + parse_timeout(step["timeout"]) if "timeout" in step else None
        ctx = self.context(key, deadline, self.step_progress(key))
        group = self.group
        if group is not None:
            ctx.redirect, ctx.digests = group.redirect, group.digests
        plan = None
        held = locks.Held()
        try:
            # before the step reads or writes; a group holds its destination's lock
            held = locks.for_step(module, params, ctx, group.covered if group else None)
            plan = module.plan(params, ctx)
            if group is not None and group.probe and plan.effects:
                raise Differs(key)
            if self.dry_run:
                self.record_planned(plan)
                return self.finals(_dicts(plan.effects), plan.outputs)
            if self.journal and plan.effects:
                planned = self.masker.effects(self.finals(_dicts(plan.effects), {})[0])
                self.journal.start_step(self.run_id, key, self.seq, step["uses"], planned)
            result = module.apply(plan, ctx)
            return self.finals(_dicts(result.effects), result.outputs)
        except Differs:
            raise StepFailed("differs", Differs(key)) from None
        except (StepFailed, JournalError):
            raise
        except (StepError, OSError, expr.ExpressionError, ContentUnknown) as e:
            message, path = describe_error(e)
            if isinstance(e, OSError) and path is None and plan is not None:
                message, path = _name_written(e, plan.effects) or (message, path)
            raise StepFailed(message, e, path) from None
        except Exception as e:  # a bug in a step type: still one line, traceback with -v
            raise StepFailed(f"{type(e).__name__}: {e}", e) from None
        finally:
            held.release()

    def step_progress(self, key: str) -> Progress:
        """A step's ``ctx.progress``: its tasks are shown by the run's display
        (bars, heartbeats) and kept in the step's journal row."""
        display = self.progress.inner
        sinks: list[Any] = [] if type(display) is Progress else [display]
        if self.journal_progress is not None:
            sinks.append(self.journal_progress)
        if not sinks:
            return self.progress
        return Tracker(sinks, key=key, label=key, shown=self.shown)

    def finals(
        self, effects: Sequence[dict[str, Any]], outputs: dict[str, Any]
    ) -> tuple[Sequence[dict[str, Any]], dict[str, Any]]:
        """A step's effects and outputs as the run reports them: inside a group,
        with staged paths shown where they will be once the group commits."""
        group = self.group
        if group is None or group.redirect is None:
            return effects, outputs
        return group.redirect.finals(effects), group.redirect.finals(outputs)

    def record_planned(self, plan: Any) -> None:
        """Layer a dry run's planned effects over the view; a tree the plan
        copies whole is recorded as one fact, not a record per file."""
        trees = getattr(plan, "trees", None) or []
        for dest, source in trees:
            self.view.copy_tree(dest, source)
        for effect in outside(plan.effects, {dest for dest, _ in trees}):
            self.view.record(effect)

    def check_params(self, uses: str, params: dict[str, Any], templated: set[str]) -> None:
        """Check the values that expressions produced; the rest were checked
        when the recipe was validated."""
        from wsrun.core.validate import _step_validator, obviously_valid

        properties = load_step(uses).SCHEMA.get("properties", {})
        # A spooled output (copy's `files`, `checksums`) is checked by its first
        # items, as the list or mapping it stands for: a million would not fit.
        params = {k: sample(v) if is_lazy(v) and k in templated else v for k, v in params.items()}
        if all(obviously_valid(properties.get(k), params[k]) for k in templated):
            return
        errors = sorted(
            _step_validator(uses).iter_errors(params), key=lambda e: list(e.absolute_path)
        )
        if errors:
            e = errors[0]
            where = ".".join(str(p) for p in e.absolute_path)
            raise StepFailed(f"with{'.' + where if where else ''}: {e.message}")

    def run_recipe_step(
        self, uses: str, params: dict[str, Any], key: str
    ) -> tuple[Sequence[dict[str, Any]], dict[str, Any]]:
        from wsrun.core.validate import InvalidRecipe, load_valid

        if self.depth >= MAX_DEPTH:
            raise StepFailed(f"recipes call each other more than {MAX_DEPTH} deep")
        try:
            sub = load_valid(resolve(uses, self.recipe.dir))
            inputs = coerce_inputs(sub, params, self.workdir)
            child = Runner(
                sub,
                inputs,
                self.settings,
                dry_run=self.dry_run,
                run_id=self.run_id,
                journal=self.journal,
                resume=self.resume,
                events=self.events,
                progress=self.progress,
                log=self.log,
                workdir=self.workdir,
                env=self.env,
                view=self.view,
                key_prefix=key + "/",
                depth=self.depth + 1,
                masker=self.masker,
            )
            child.journal_progress = self.journal_progress
        except InvalidRecipe as e:
            raise StepFailed(
                f"recipe '{uses}' is invalid: {e.problems[0].where}: {e.problems[0].message}"
            ) from None
        except RunError as e:
            raise StepFailed(str(e)) from None
        sub_report = child.run()
        effects = [eff for s in sub_report.steps for eff in s.effects]
        if sub_report.status == "failed":
            raise StepFailed(f"in recipe '{uses}': {sub_report.error}", sub_report.cause)
        return effects, sub_report.outputs


def _rechecked_on_resume(uses: str) -> bool:
    """Whether a step a resumed run already finished is planned again rather than
    taken from the journal: step types whose plan only compares the world with
    what they would write (``RECHECK_ON_RESUME``), so that a source changed since
    the first run is copied or hashed again, and an unchanged one costs a look
    (and keeps the journal's record: outputs and effects of the first run)."""
    if is_recipe_ref(uses):
        return False
    try:
        return bool(getattr(load_step(uses), "RECHECK_ON_RESUME", False))
    except Exception:  # noqa: BLE001 - an unknown type: the journal's record stands
        return False


def _dicts(effects: Sequence[Effect]) -> Sequence[dict[str, Any]]:
    """Effects as dicts; a spooled plan's stay lazy (made as they are read)."""
    if isinstance(effects, EffectSpool):
        return EffectDicts(effects)
    if isinstance(effects, Spool):
        return Mapped(effects, effect_dict)
    return [e.to_dict() for e in effects]


def _name_written(exc: OSError, effects: list[Effect]) -> tuple[str, str] | None:
    """A write error that names no file (disk full, file too large) as a line that
    names what the step was writing: its one file, or the directory of its files."""
    written = [e.path for e in effects if e.op == "create_file"]
    if not written or not exc.strerror:
        return None
    path = written[0] if len(written) == 1 else os.path.commonpath(written)
    what = "" if len(written) == 1 else f" (writing {len(written)} files)"
    return f"{path}: {exc.strerror}{what}", path


class _MaskedProgress(Progress):
    """Progress bars whose descriptions (often paths) have the run's secrets masked."""

    def __init__(self, progress: Progress, masker: Masker) -> None:
        self.inner = progress.inner if isinstance(progress, _MaskedProgress) else progress
        self.masker = masker

    def task(
        self, description: str, total_bytes: int | None = None, total_files: int | None = None
    ) -> ProgressTask:
        shown = printable(self.masker.text(description))
        return self.inner.task(shown, total_bytes, total_files)
