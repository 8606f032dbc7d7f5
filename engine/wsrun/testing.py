"""Helpers for testing a step type on its own, without a recipe."""

from __future__ import annotations

from typing import Any

from wsrun.core.fs import WorldView
from wsrun.core.step import Plan, Result, StepContext, load_step


def plan_step(
    name: str, params: dict[str, Any], workdir: str, view: WorldView | None = None
) -> Plan:
    """Plan one step; ``view`` lets a test layer earlier planned effects."""
    module = load_step(name)
    ctx = StepContext(
        fs=view or WorldView(), dry_run=view is not None, workdir=workdir, step_id=name
    )
    return module.plan(params, ctx)


def run_step(name: str, params: dict[str, Any], workdir: str) -> tuple[Plan, Result]:
    """Plan and apply one step for real; returns both so tests can compare effects."""
    module = load_step(name)
    ctx = StepContext(fs=WorldView(), workdir=workdir, step_id=name)
    plan = module.plan(params, ctx)
    return plan, module.apply(plan, ctx)


def effect_dicts(effects: list[Any]) -> list[dict[str, Any]]:
    return [e.to_dict() for e in effects]
