"""The dry-run promise: for every example and packaged recipe that runs
offline, the effects `--dry-run --json` prints are the effects the real run
reports (same ops, paths and sizes), the dry run writes nothing, and a second
real run changes nothing."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, as_planned, snapshot
from fixtures import alma, distillery, staging

Setup = Callable[[Path], list[str]]


def quickstart(tmp: Path) -> list[str]:
    src = tmp / "products"
    shutil.copytree(ROOT / "examples" / "quickstart" / "products", src)
    return [str(ROOT / "examples" / "quickstart"), str(src), str(tmp / "out"), "--tar"]


def nrao_deliver(tmp: Path) -> list[str]:
    from fixtures.processing import vla_calibration

    processing = vla_calibration(tmp / "spool", "pretty")
    return ["nrao/deliver", str(processing.root), "-l", str(tmp / "out"), "--prefix", "REQ-1"]


def nrao_deliver_tar(tmp: Path) -> list[str]:
    return [*nrao_deliver(tmp), "-t"]


def nrao_conveyor(tmp: Path, option: str = "--deliver") -> list[str]:
    from fixtures.workspaces import workspace

    ws = workspace(tmp)
    root = f"edu.nrao.workspaces.ProcessingSettings.rootDirectory={ws.root}"
    return ["nrao/conveyor", option, str(ws.metadata), "--set", root]


def nrao_conveyor_qa_fail(tmp: Path) -> list[str]:
    """A delivered request (its directories in qa2/, linked from the parent)."""
    import os

    from fixtures.workspaces import DIRS

    args = nrao_conveyor(tmp, "--qa-fail")
    parent = Path(args[2]).parent
    qa = parent.parent.parent / "qa2" / parent.name
    qa.mkdir()
    for d in DIRS:
        os.rename(parent / d, qa / d)
        (parent / d).symlink_to(qa / d)
    return args


#: How to run each recipe offline: recipe path (relative to the repo) -> setup.
CASES: dict[str, Setup] = {
    "examples/quickstart/recipe.yaml": quickstart,
    "engine/wsrun/packs/nrao/recipes/deliver.yaml": nrao_deliver,
    "engine/wsrun/packs/nrao/recipes/deliver.yaml -t": nrao_deliver_tar,
    "engine/wsrun/packs/nrao/recipes/conveyor.yaml --deliver": nrao_conveyor,
    "engine/wsrun/packs/nrao/recipes/conveyor.yaml --qa-fail": nrao_conveyor_qa_fail,
    "engine/wsrun/packs/nrao/recipes/ingest_envoy.yaml": staging.envoy_calibration_case,
    **alma.CASES,
    **distillery.CASES,
}

#: Cases whose second run must be refused (changing nothing) rather than be a no-op.
SECOND_RUN_REFUSED: dict[str, str] = {
    **alma.SECOND_RUN_REFUSED,
    **distillery.SECOND_RUN_REFUSED,
}


def all_recipes() -> list[str]:
    """Every YAML file under examples/ and recipes/ that is a recipe."""
    found = [*ROOT.glob("examples/**/*.yaml"), *ROOT.glob("recipes/**/*.yaml")]
    return sorted(
        str(p.relative_to(ROOT)) for p in found if "recipe" in (yaml.safe_load(p.read_text()) or {})
    )


def test_every_recipe_has_a_fidelity_case() -> None:
    covered = {case.split()[0] for case in CASES}
    missing = [r for r in all_recipes() if r not in covered and r not in OFFLINE_EXEMPT]
    assert not missing, f"add a fidelity case for {missing}"


#: Recipes that cannot run offline (they need a network service), with the reason.
OFFLINE_EXEMPT: dict[str, str] = {**distillery.OFFLINE_EXEMPT}


def effects(report: dict) -> list[tuple[str, list[dict]]]:
    return [(s["id"], s["effects"]) for s in report["steps"]]


@pytest.mark.parametrize("recipe", sorted(CASES))
def test_dry_run_effects_equal_real_run_effects(recipe: str, cli, tmp_path: Path) -> None:
    args = CASES[recipe](tmp_path)
    before = snapshot(tmp_path)
    dry = cli(*args, "--dry-run", "--json")
    assert dry.code == 0, dry.err
    assert snapshot(tmp_path) == before, "a dry run must not write anything"
    real = cli(*args, "--json")
    assert real.code == 0, real.err
    dry_report, real_report = json.loads(dry.out), json.loads(real.out)
    planned, done = effects(dry_report), effects(real_report)
    assert [s for s, _ in planned] == [s for s, _ in done]
    for (step, plan), (_, did) in zip(planned, done, strict=True):
        assert [as_planned(d, p) for p, d in zip(plan, did, strict=True)] == plan, step
    assert any(e for _, e in effects(real_report)), "the case should change something"
    again = cli(*args, "--json")
    if recipe in SECOND_RUN_REFUSED:
        assert again.code == 1, f"a second run must be refused: {SECOND_RUN_REFUSED[recipe]}"
    else:
        assert again.code == 0, again.err
    assert all(not e for _, e in effects(json.loads(again.out))), "a second run must change nothing"
