"""The `conveyor` tool as a recipe (engine/wsrun/packs/nrao/recipes/conveyor.yaml), end to end.

Deliver to qa2/ and image-qa/ and back (byte for byte), qa-fail, the refusals
(which change nothing), every state a killed run can leave (a re-run completes
it), and a run killed with SIGKILL at several moments on a larger tree that
crosses filesystems when /dev/shm is one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import snapshot
from fixtures.workspaces import DIRS, WEBLOG_INDEX, Workspace, checksums, workspace

ROOT_SETTING = "edu.nrao.workspaces.ProcessingSettings.rootDirectory"
CONVEYOR = Path(sys.executable).parent / "conveyor"


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return workspace(tmp_path)


def conveyor(cli, ws: Workspace, option: str, *extra: str, metadata: Path | None = None):
    """Run `wsrun nrao/conveyor OPTION METADATA --set root=...`."""
    meta = str(metadata or ws.metadata)
    return cli("nrao/conveyor", option, meta, "--set", f"{ROOT_SETTING}={ws.root}", *extra)


def originals(ws: Workspace) -> dict[str, dict[str, str]]:
    return {d: checksums(ws.parent / d) for d in DIRS}


def assert_delivered(ws: Workspace, area: str, before: dict[str, dict[str, str]]) -> None:
    qa = ws.qa_dir(area)
    for d in DIRS:
        link = ws.parent / d
        assert link.is_symlink() and os.readlink(link) == str(qa / d)
        assert (qa / d).is_dir() and not (qa / d).is_symlink()
        assert checksums(qa / d) == before[d]
    assert sorted(p.name for p in qa.iterdir()) == sorted(DIRS)
    assert (ws.parent / "weblog" / WEBLOG_INDEX).is_file()


def assert_home(ws: Workspace, before: dict[str, dict[str, str]]) -> None:
    for d in DIRS:
        assert not (ws.parent / d).is_symlink()
        assert checksums(ws.parent / d) == before[d]
    for area in ("qa2", "image-qa"):
        assert list((ws.root / area).iterdir()) == [], f"{area} is not clean"


def effects_of(result) -> list:
    return [e for s in json.loads(result.out)["steps"] for e in s["effects"]]


# ---- the command line --------------------------------------------------------------------


def test_usage_requires_exactly_one_operation(cli, ws: Workspace) -> None:
    r = cli("nrao/conveyor", "--set", f"{ROOT_SETTING}={ws.root}")
    assert r.code == 2 and "one of the arguments --deliver --retrieve" in r.err
    r = cli("nrao/conveyor", "--deliver", ws.metadata, "--retrieve", ws.metadata)
    assert r.code == 2 and "not allowed with argument" in r.err
    r = cli("nrao/conveyor", "--help")
    assert r.code == 0
    for flag in ("--deliver DELIVER", "--retrieve-img RETRIEVE_IMG", "--qa-fail QA_FAIL"):
        assert flag in r.out
    assert "clean up after a QA Fail" in r.out and "--dry-run" in r.out


def test_missing_setting_is_refused(cli, ws: Workspace) -> None:
    r = cli("nrao/conveyor", "--deliver", ws.metadata)
    assert r.code == 2 and ROOT_SETTING in r.err  # a configuration error, before any step


# ---- the operations ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("deliver", "retrieve", "area"),
    [("--deliver", "--retrieve", "qa2"), ("--deliver-img", "--retrieve-img", "image-qa")],
)
def test_deliver_then_retrieve_byte_for_byte(
    cli, ws: Workspace, deliver: str, retrieve: str, area: str
) -> None:
    before = originals(ws)
    r = conveyor(cli, ws, deliver, "--json")
    assert r.code == 0, r.err
    assert_delivered(ws, area, before)
    again = conveyor(cli, ws, deliver, "--json")
    assert again.code == 0 and effects_of(again) == []
    r = conveyor(cli, ws, retrieve, "--json")
    assert r.code == 0, r.err
    assert_home(ws, before)
    assert (ws.parent / "weblog" / WEBLOG_INDEX).is_file(), "the cached weblog stays"
    again = conveyor(cli, ws, retrieve, "--json")
    assert again.code == 0 and effects_of(again) == []


@pytest.mark.parametrize("deliver", ["--deliver", "--deliver-img"])
def test_qa_fail_brings_back_and_cleans_either_area(cli, ws: Workspace, deliver: str) -> None:
    before = originals(ws)
    assert conveyor(cli, ws, deliver).code == 0
    r = conveyor(cli, ws, "--qa-fail", "--json")
    assert r.code == 0, r.err
    assert_home(ws, before)
    again = conveyor(cli, ws, "--qa-fail", "--json")
    assert again.code == 0 and effects_of(again) == []


def test_retrieve_keeps_a_qa_directory_with_other_content(cli, ws: Workspace) -> None:
    before = originals(ws)
    assert conveyor(cli, ws, "--deliver").code == 0
    (ws.qa_dir() / "notes.txt").write_text("QA notes\n")
    r = conveyor(cli, ws, "--retrieve")
    assert r.code == 0, r.err
    for d in DIRS:
        assert checksums(ws.parent / d) == before[d]
    assert sorted(p.name for p in ws.qa_dir().iterdir()) == ["notes.txt"]


def test_dry_run_changes_nothing(cli, ws: Workspace, tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    r = conveyor(cli, ws, "--deliver", "--dry-run")
    assert r.code == 0, r.err
    assert snapshot(tmp_path) == before


def test_without_weblog_archive_the_rest_is_delivered(cli, ws: Workspace) -> None:
    (ws.parent / "products" / "weblog.tgz").unlink()
    before = originals(ws)
    r = conveyor(cli, ws, "--deliver", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["outputs"]["weblog"] is None
    assert not (ws.parent / "weblog").exists()
    for d in DIRS:
        assert checksums(ws.qa_dir() / d) == before[d]


def test_relative_metadata_path_and_symlinked_directories_inside(cli, ws: Workspace) -> None:
    before = originals(ws)
    r = cli(
        "nrao/conveyor",
        "--deliver",
        "metadata.json",
        "--set",
        f"{ROOT_SETTING}={ws.root}",
        cwd=ws.parent,
    )
    assert r.code == 0, r.err
    assert_delivered(ws, "qa2", before)
    assert os.readlink(ws.qa_dir() / "rawdata" / "link-to-sub0") == "sub0"


# ---- refusals: exit 1, one line, nothing changed -----------------------------------------


def _refused(cli, ws: Workspace, tmp_path: Path, option: str, expect: str, **kw) -> None:
    before = snapshot(tmp_path)
    r = conveyor(cli, ws, option, **kw)
    assert r.code == 1
    errors = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expect in errors[0], r.err
    assert snapshot(tmp_path) == before


def test_refuses_missing_metadata(cli, ws: Workspace, tmp_path: Path) -> None:
    _refused(
        cli, ws, tmp_path, "--deliver", "metadata file does not exist", metadata=tmp_path / "no"
    )


def test_refuses_unreadable_metadata(cli, ws: Workspace, tmp_path: Path) -> None:
    ws.metadata.write_text("{not json")
    _refused(cli, ws, tmp_path, "--deliver", "cannot read the metadata file")


@pytest.mark.parametrize("content", [{"systemId": "42"}, {"destinationDirectory": "rel/dir"}, []])
def test_refuses_metadata_without_the_keys(cli, ws: Workspace, tmp_path: Path, content) -> None:
    ws.metadata.write_text(json.dumps(content))
    _refused(cli, ws, tmp_path, "--retrieve", "metadata has no destinationDirectory")


def test_refuses_missing_parent_directory(cli, ws: Workspace, tmp_path: Path) -> None:
    ws.metadata.write_text(json.dumps({"destinationDirectory": str(tmp_path / "gone")}))
    _refused(cli, ws, tmp_path, "--deliver", "parent directory does not exist")


def test_refuses_missing_qa_area(cli, ws: Workspace, tmp_path: Path) -> None:
    (ws.root / "image-qa").rmdir()
    _refused(cli, ws, tmp_path, "--deliver-img", "QA area does not exist")


def test_refuses_qa_directory_with_other_content(cli, ws: Workspace, tmp_path: Path) -> None:
    (ws.qa_dir() / "old-run").mkdir(parents=True)
    _refused(cli, ws, tmp_path, "--deliver", "QA directory already holds other content (old-run)")
    _refused(cli, ws, tmp_path, "--qa-fail", "other content")


def test_refuses_qa_directory_holding_a_different_tree(cli, ws: Workspace, tmp_path: Path) -> None:
    (ws.qa_dir() / "working").mkdir(parents=True)
    (ws.qa_dir() / "working" / "other.dat").write_text("not ours\n")
    _refused(cli, ws, tmp_path, "--deliver", "exist with different content")


def test_refuses_a_symlink_pointing_elsewhere(cli, ws: Workspace, tmp_path: Path) -> None:
    assert conveyor(cli, ws, "--deliver").code == 0
    (ws.parent / "products").unlink()
    (ws.parent / "products").symlink_to(tmp_path)
    _refused(cli, ws, tmp_path, "--retrieve", "is a symlink to")
    _refused(cli, ws, tmp_path, "--deliver", "refusing to touch it")
    _refused(cli, ws, tmp_path, "--retrieve-img", "not to")


def test_refuses_a_missing_directory(cli, ws: Workspace, tmp_path: Path) -> None:
    shutil.rmtree(ws.parent / "working")
    _refused(cli, ws, tmp_path, "--deliver", "is missing, and not in the QA area")


def test_refuses_a_dangling_link_of_ours(cli, ws: Workspace, tmp_path: Path) -> None:
    assert conveyor(cli, ws, "--deliver").code == 0
    shutil.rmtree(ws.qa_dir() / "rawdata")
    _refused(cli, ws, tmp_path, "--retrieve", "which does not exist")


# ---- crash states: what a killed run leaves, completed by a re-run -----------------------


def _link(ws: Workspace, d: str, area: str = "qa2") -> None:
    (ws.parent / d).symlink_to(ws.qa_dir(area) / d)


def _move_out(ws: Workspace, d: str, area: str = "qa2") -> None:
    ws.qa_dir(area).mkdir(exist_ok=True)
    os.rename(ws.parent / d, ws.qa_dir(area) / d)


def _deliver_states():
    """Name -> how to bring a fresh workspace to a state a killed deliver leaves."""

    def one_moved(ws: Workspace) -> None:
        _move_out(ws, "rawdata")

    def moved_not_linked(ws: Workspace) -> None:
        for d in DIRS:
            _move_out(ws, d)

    def some_linked(ws: Workspace) -> None:
        moved_not_linked(ws)
        _link(ws, "rawdata")
        (ws.parent / ".products.wsrun-tmp").symlink_to("x")  # a link's temp name, left over

    def weblog_half_unpacked(ws: Workspace) -> None:
        index = ws.parent / "weblog" / WEBLOG_INDEX
        index.parent.mkdir(parents=True)
        index.write_text("half")

    def copy_not_yet_removed(ws: Workspace) -> None:
        # A move across filesystems killed while removing its source.
        ws.qa_dir().mkdir()
        shutil.copytree(ws.parent / "products", ws.qa_dir() / "products", symlinks=True)
        for f in sorted((ws.parent / "products").rglob("*.dat"))[:2]:
            f.unlink()

    def copy_in_progress(ws: Workspace) -> None:
        ws.qa_dir().mkdir()
        tmp = ws.qa_dir() / ".working.wsrun-tmp"
        tmp.mkdir()
        (tmp / "partial").write_text("x")

    return {
        f.__name__: f
        for f in (
            one_moved,
            moved_not_linked,
            some_linked,
            weblog_half_unpacked,
            copy_not_yet_removed,
            copy_in_progress,
        )
    }


def _retrieve_states():
    """Name -> how to bring a delivered workspace to a state a killed retrieve leaves."""

    def link_removed(ws: Workspace) -> None:
        (ws.parent / "products").unlink()

    def one_back(ws: Workspace) -> None:
        (ws.parent / "rawdata").unlink()
        os.rename(ws.qa_dir() / "rawdata", ws.parent / "rawdata")

    def all_back_dir_left(ws: Workspace) -> None:
        for d in DIRS:
            (ws.parent / d).unlink()
            os.rename(ws.qa_dir() / d, ws.parent / d)

    def copy_not_yet_removed(ws: Workspace) -> None:
        (ws.parent / "working").unlink()
        shutil.copytree(ws.qa_dir() / "working", ws.parent / "working", symlinks=True)
        for f in sorted((ws.qa_dir() / "working").rglob("*.dat"))[:1]:
            f.unlink()

    return {
        f.__name__: f for f in (link_removed, one_back, all_back_dir_left, copy_not_yet_removed)
    }


DELIVER_STATES = _deliver_states()
RETRIEVE_STATES = _retrieve_states()


@pytest.mark.parametrize("state", sorted(DELIVER_STATES))
def test_rerun_completes_an_interrupted_deliver(cli, ws: Workspace, state: str) -> None:
    before = originals(ws)
    DELIVER_STATES[state](ws)
    r = conveyor(cli, ws, "--deliver")
    assert r.code == 0, r.err
    assert_delivered(ws, "qa2", before)
    assert not (ws.parent / ".products.wsrun-tmp").exists()


@pytest.mark.parametrize("option", ["--retrieve", "--qa-fail"])
@pytest.mark.parametrize("state", sorted(RETRIEVE_STATES))
def test_rerun_completes_an_interrupted_retrieve(cli, ws: Workspace, state: str, option) -> None:
    before = originals(ws)
    assert conveyor(cli, ws, "--deliver").code == 0
    RETRIEVE_STATES[state](ws)
    r = conveyor(cli, ws, option)
    assert r.code == 0, r.err
    assert_home(ws, before)


# ---- the installed command, and SIGKILL ---------------------------------------------------


def _run_conveyor(ws: Workspace, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CONVEYOR), *args, "--set", f"{ROOT_SETTING}={ws.root}"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_installed_command(ws: Workspace) -> None:
    before = originals(ws)
    r = _run_conveyor(ws, "--deliver", str(ws.metadata), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["outputs"]["qa_dir"] == str(ws.qa_dir())
    assert_delivered(ws, "qa2", before)
    r = _run_conveyor(ws, "--retrieve", str(ws.metadata))
    assert r.returncode == 0, r.stderr
    assert_home(ws, before)
    r = _run_conveyor(ws, "--retrieve", str(ws.parent / "nope.json"))
    assert r.returncode == 1 and "metadata file does not exist" in r.stderr


@pytest.fixture
def big(tmp_path: Path):
    """A larger workspace; its QA areas are on another filesystem (/dev/shm)
    when there is one, so moves copy, verify and remove."""
    w = workspace(tmp_path, files=30, size=1_000_000)
    other = None
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != tmp_path.stat().st_dev:
        other = Path(tempfile.mkdtemp(dir=shm, prefix="conveyor-test-"))
        for area in ("qa2", "image-qa"):
            (w.root / area).rmdir()
            (other / area).mkdir()
            (w.root / area).symlink_to(other / area)
    yield w
    if other is not None:
        shutil.rmtree(other)


def _reachable(ws: Workspace, before: dict[str, dict[str, str]]) -> None:
    """Each directory is whole in one of its two places."""
    for d in DIRS:
        places = [p for p in (ws.parent / d, ws.qa_dir() / d) if p.is_dir()]
        assert any(checksums(p.resolve()) == before[d] for p in places), d


@pytest.mark.parametrize("option", ["--deliver", "--retrieve"])
def test_sigkill_at_any_moment_then_rerun(big: Workspace, option: str) -> None:
    before = originals(big)
    if option == "--retrieve":
        assert _run_conveyor(big, "--deliver", str(big.metadata)).returncode == 0
    env = {**os.environ}
    for delay in (0.3, 0.45, 0.6, 0.75, 0.9, 1.1):
        proc = subprocess.Popen(
            [str(CONVEYOR), option, str(big.metadata), "--set", f"{ROOT_SETTING}={big.root}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _reachable(big, before)
    r = _run_conveyor(big, option, str(big.metadata))
    assert r.returncode == 0, r.stderr
    if option == "--deliver":
        assert_delivered(big, "qa2", before)
    else:
        assert_home(big, before)


# ---- the qa-request step on its own -------------------------------------------------------


def _request(ws: Workspace, operation: str, view=None, area="qa2"):
    from wsrun.testing import plan_step

    params = {"metadata": str(ws.metadata), "root": str(ws.root), "operation": operation}
    return plan_step("qa-request", {**params, "area": area}, str(ws.parent), view)


def test_qa_request_only_reads_and_lists_the_work(ws: Workspace, tmp_path: Path) -> None:
    from wsrun.testing import run_step

    before = snapshot(tmp_path)
    plan, result = run_step(
        "qa-request",
        {"metadata": "metadata.json", "root": str(ws.root), "operation": "deliver", "area": "qa2"},
        str(ws.parent),
    )
    assert plan.effects == result.effects == [] and snapshot(tmp_path) == before
    out = result.outputs
    qa = str(ws.qa_dir())
    assert out["parent"] == str(ws.parent) and out["request"] == ws.request and out["qa_dir"] == qa
    assert out["move"] == [{"source": str(ws.parent / d), "to": f"{qa}/{d}"} for d in DIRS]
    assert out["link"] == [{"link": str(ws.parent / d), "target": f"{qa}/{d}"} for d in DIRS]
    assert out["weblog_tar"] == str(ws.parent / "products" / "weblog.tgz")
    assert out["unlink"] == out["leftovers"] == out["remove_qa_dir"] == []


def test_qa_request_sees_planned_effects_in_a_dry_run(ws: Workspace) -> None:
    from wsrun.core.effects import create_symlink, move
    from wsrun.core.fs import WorldView

    view = WorldView()
    qa = ws.qa_dir()
    view.record(move(str(ws.parent / "rawdata"), str(qa / "rawdata"), bytes=0))
    view.record(create_symlink(str(ws.parent / "rawdata"), str(qa / "rawdata")))
    out = _request(ws, "retrieve", view).outputs
    assert out["unlink"] == [str(ws.parent / "rawdata")]
    assert out["move"] == [{"source": str(qa / "rawdata"), "to": str(ws.parent / "rawdata")}]


def test_qa_request_accepts_a_relative_link_of_ours(ws: Workspace) -> None:
    _move_out(ws, "working")
    (ws.parent / "working").symlink_to(os.path.relpath(ws.qa_dir() / "working", ws.parent))
    out = _request(ws, "deliver").outputs
    assert [m["source"] for m in out["move"]] == [
        str(ws.parent / d) for d in ("rawdata", "products")
    ]
    assert str(ws.parent / "working") not in [lk["link"] for lk in out["link"]]
