"""The state store: lifecycles, transactional transitions, history, the outbox,
the set-state/get-state/wait-state steps (faithful dry runs) and `wsrun state`.

Every test that uses a store runs on each backend: the embedded SQLite file and
PostgreSQL (a fresh schema per test; skipped when the server is absent, failing
under CI=true). The ``url`` fixture also sets $WSRUN_STATE_URL, so the steps and
`wsrun state` run against the same store.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, write
from wsrun.stores.state import (
    IllegalTransition,
    StateConflict,
    StateError,
    StateStore,
    UnknownEntity,
    load_lifecycle,
    open_state_store,
    state_url,
)
from wsrun.stores.state.lifecycle import LifecycleError

OUS_LIFECYCLE = ROOT / "engine" / "wsrun" / "packs" / "alma" / "recipes" / "ous-lifecycle.yaml"
HAPPY_PATH = [
    "ReadyForProcessing",
    "Processing",
    "ReadyForReview",
    "Reviewing",
    "Verified",
    "DeliveryInProgress",
    "Delivered",
]


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, wsrun_home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The store under test on each backend, also the default store of this test."""
    if request.param == "sqlite":
        found = f"sqlite://{wsrun_home}/state.db"
    else:
        found = request.getfixturevalue("pg_url")
    monkeypatch.setenv("WSRUN_STATE_URL", found)
    return found


@pytest.fixture
def store(url: str) -> StateStore:
    s = open_state_store(url)
    s.register_lifecycle(load_lifecycle(str(OUS_LIFECYCLE)))
    return s


def snapshot(store: StateStore) -> tuple:
    """Everything the store holds, to prove a refused change changed nothing."""
    return (
        [e.to_json() for e in store.list(limit=1000)],
        [c.to_json() for e in store.list(limit=1000) for c in store.history(e.kind, e.id)],
    )


# ---- lifecycles -------------------------------------------------------------------


def test_ous_lifecycle_loads() -> None:
    lc = load_lifecycle(str(OUS_LIFECYCLE))
    assert lc.kind == "ous" and lc.initial == "ReadyForProcessing"
    assert lc.states == [*HAPPY_PATH[:2], "ProcessingProblem", *HAPPY_PATH[2:]]
    assert lc.substates == [
        "IngestionTriggered",
        "AnalyzingProducts",
        "IngestingProducts",
        "ProductsIngested",
    ]
    assert lc.allowed("Processing") == ["ReadyForReview", "ProcessingProblem"]
    assert lc.allowed("Reviewing") == ["Verified", "ReadyForProcessing", "ReadyForReview"]
    assert lc.allowed("ProcessingProblem") == ["ReadyForProcessing"]
    assert lc.allowed("Delivered") == []
    for a, b in zip(HAPPY_PATH, HAPPY_PATH[1:], strict=False):
        lc.check(a, b)
    with pytest.raises(IllegalTransition, match=r"Processing -> Verified is not allowed"):
        lc.check("Processing", "Verified")
    with pytest.raises(IllegalTransition, match=r"\(from Delivered: none: it is a final state\)"):
        lc.check("Delivered", "Processing")
    with pytest.raises(IllegalTransition, match=r"none: Old is not a state of ous"):
        lc.check("Old", "Processing")


def test_lifecycle_errors_name_file_line_and_column(tmp_path: Path) -> None:
    bad = write(
        tmp_path / "bad.yaml",
        """
        kind: ous
        states: [A, B, A]
        initial: C
        substates:
          - {name: S, in: [Z]}
        transitions:
          - {from: A, to: B}
          - {from: [B], to: Q, colour: red}
        """,
    )
    with pytest.raises(LifecycleError) as e:
        load_lifecycle(str(bad))
    assert e.value.problems == [f"{bad}:8:24: unknown key 'colour' (known: description, from, to)"]
    del_colour = bad.read_text().replace(", colour: red", "")
    bad.write_text(del_colour)
    with pytest.raises(LifecycleError) as e:
        load_lifecycle(str(bad))
    assert e.value.problems == [
        f"{bad}:2:16: state 'A' is listed twice",
        f"{bad}:3:10: unknown state 'C' (states: A, B, A)",
        f"{bad}:5:20: unknown state 'Z' (states: A, B, A)",
        f"{bad}:8:21: unknown state 'Q' (states: A, B, A)",
    ]
    bad.write_text("kind: ous\nstates: [A\n")
    with pytest.raises(LifecycleError, match=rf"^{bad}:3:1: YAML: "):
        load_lifecycle(str(bad))


def test_validate_checks_a_lifecycle_file_as_a_lifecycle(cli, tmp_path: Path) -> None:
    r = cli("validate", OUS_LIFECYCLE)
    assert r.code == 0 and r.out == f"{OUS_LIFECYCLE}: ok\n"
    bad = write(tmp_path / "bad.yaml", "kind: ous\nstates: [A]\ntransitions: [{from: A, to: B}]\n")
    r = cli("validate", bad)
    assert r.code == 2 and r.err == f"{bad}:3:29: unknown state 'B' (states: A)\n"
    assert "recipe" not in r.err


# ---- transitions --------------------------------------------------------------------


def test_happy_path_keeps_history(store: StateStore) -> None:
    store.transition("ous", "X1", state="ReadyForProcessing", create=True, actor="launcher")
    for state in HAPPY_PATH[1:]:
        store.transition("ous", "X1", state=state, expect_state=None, actor="test")
    entity = store.get("ous", "X1")
    assert entity is not None and entity.state == "Delivered" and entity.version == 7
    history = store.history("ous", "X1")
    assert [c.state for c in history] == HAPPY_PATH
    assert [c.from_state for c in history] == [None, *HAPPY_PATH[:-1]]
    assert [c.seq for c in history] == sorted(c.seq for c in history)
    assert history[0].actor == "launcher"


def test_creation_only_into_initial_and_unknown_entities(store: StateStore) -> None:
    with pytest.raises(UnknownEntity, match="no ous 'X1'"):
        store.transition("ous", "X1", state="ReadyForProcessing")
    with pytest.raises(IllegalTransition, match="a new ous starts in ReadyForProcessing"):
        store.transition("ous", "X1", state="Processing", create=True)
    assert store.get("ous", "X1") is None and store.history("ous", "X1") == []


def test_illegal_transitions_change_nothing(store: StateStore) -> None:
    store.transition("ous", "X1", state="ReadyForProcessing", create=True)
    store.transition("ous", "X1", state="Processing")
    before = snapshot(store)
    with pytest.raises(IllegalTransition) as e:
        store.transition("ous", "X1", state="Verified", attributes={"qa2": "Pass"})
    assert str(e.value) == (
        "ous X1: Processing -> Verified is not allowed "
        "(from Processing: ReadyForReview, ProcessingProblem)"
    )
    with pytest.raises(IllegalTransition, match="ous has no state 'Done'"):
        store.transition("ous", "X1", state="Done")
    with pytest.raises(IllegalTransition, match="ous has no substate 'Nope'"):
        store.transition("ous", "X1", substate="Nope")
    with pytest.raises(
        IllegalTransition, match="substate IngestionTriggered is not allowed in Processing"
    ):
        store.transition("ous", "X1", substate="IngestionTriggered")
    assert snapshot(store) == before


def test_expect_state_conflict(store: StateStore) -> None:
    store.transition("ous", "X1", state="ReadyForProcessing", create=True)
    before = snapshot(store)
    with pytest.raises(StateConflict, match="ous X1 is ReadyForProcessing, not ReadyForReview"):
        store.transition("ous", "X1", state="Reviewing", expect_state="ReadyForReview")
    with pytest.raises(StateConflict, match="changed"):
        store.transition("ous", "X1", state="Processing", expect_version=5)
    assert snapshot(store) == before
    assert isinstance(StateConflict("x"), StateError)


def test_substates_and_attributes(store: StateStore) -> None:
    store.transition(
        "ous", "X1", state="ReadyForProcessing", create=True, attributes={"exec": "EU"}
    )
    for state in HAPPY_PATH[1:5]:
        store.transition("ous", "X1", state=state)
    change = store.transition("ous", "X1", substate="IngestionTriggered", attributes={"n": 1})
    assert (change.from_state, change.state) == ("Verified", "Verified")
    assert (change.from_substate, change.substate) == (None, "IngestionTriggered")
    assert change.attributes == {"n": 1}
    # A state change keeps a substate the new state allows ...
    store.transition("ous", "X1", state="DeliveryInProgress")
    entity = store.get("ous", "X1")
    assert entity is not None and entity.substate == "IngestionTriggered"
    assert entity.attributes == {"exec": "EU", "n": 1}
    # ... and None clears it.
    store.transition("ous", "X1", substate=None)
    assert store.get("ous", "X1").substate is None  # type: ignore[union-attr]


def test_list_count_and_kinds_without_lifecycle(store: StateStore) -> None:
    for i in range(3):
        store.transition("ous", f"X{i}", state="ReadyForProcessing", create=True)
    store.transition("ous", "X0", state="Processing")
    store.transition("request", "R1", state="anything", substate="free", create=True)
    store.transition("request", "R1", state="whatever")
    assert [e.id for e in store.list()] == ["R1", "X0", "X2", "X1"]  # newest first
    assert [e.id for e in store.list(kind="ous", state="ReadyForProcessing")] == ["X2", "X1"]
    assert store.count(kind="ous") == 3 and store.count(state="Processing") == 1
    assert [e.id for e in store.list(limit=2, offset=1)] == ["X0", "X2"]
    assert store.get("request", "R1").substate == "free"  # type: ignore[union-attr]


def test_state_url_selection(tmp_path: Path, wsrun_home: Path) -> None:
    assert state_url() == f"sqlite://{wsrun_home}/state.db"
    write(tmp_path / "capo" / "test.properties", "wsrun.state.url = sqlite:///profile.db\n")
    profile = {"CAPO_PROFILE": "test", "CAPO_PATH": str(tmp_path / "capo")}
    assert state_url(env=profile) == "sqlite:///profile.db"
    assert state_url(env={**profile, "WSRUN_STATE_URL": "sqlite:///env.db"}) == "sqlite:///env.db"
    assert state_url("sqlite:///given.db", env={"WSRUN_STATE_URL": "x"}) == "sqlite:///given.db"
    with pytest.raises(StateError, match=r"no state store backend for 'mongodb://' \(known: "):
        open_state_store("mongodb://db/state")


def test_reading_a_missing_store_creates_nothing(tmp_path: Path) -> None:
    s = open_state_store(f"sqlite://{tmp_path}/none/state.db")
    assert s.get("ous", "X") is None and s.list() == [] and s.count() == 0
    assert s.lifecycle("ous") is None and s.claim_pending_changes("relay") == []
    assert not (tmp_path / "none").exists()


# ---- many processes ---------------------------------------------------------------


def _done(store: StateStore) -> None:
    """Close a child process's store and its connection pools (the child
    outlives the test, and the test's PostgreSQL schema)."""
    from wsrun.core import db

    store.close()
    db.close_pools()


def _increment(url: str, times: int) -> int:
    """Add 1 to the attribute n ``times`` times, read-modify-write with a version check."""
    store = open_state_store(url)
    conflicts = 0
    for _ in range(times):
        while True:
            entity = store.get("counter", "c")
            assert entity is not None
            try:
                store.transition(
                    "counter",
                    "c",
                    attributes={"n": entity.attributes["n"] + 1},
                    expect_version=entity.version,
                )
                break
            except StateConflict:
                conflicts += 1
    _done(store)
    return conflicts


def _race(url: str, start: float) -> bool:
    """Try to take the OUS for processing; True if this process won."""
    store = open_state_store(url)
    time.sleep(max(0.0, start - time.time()))
    try:
        store.transition("ous", "X1", state="Processing", expect_state="ReadyForProcessing")
        return True
    except StateConflict:
        return False
    finally:
        _done(store)


def _move(url: str, start: float, state: str) -> str:
    """Move the OUS to ``state`` without expecting anything; what happened."""
    store = open_state_store(url)
    time.sleep(max(0.0, start - time.time()))
    try:
        store.transition("ous", "X1", state=state)
        return "moved"
    except StateError as e:
        return type(e).__name__
    finally:
        _done(store)


def _create(url: str, start: float, must_be_new: bool) -> bool:
    """Create the OUS (or, unless ``must_be_new``, find it created); True on success."""
    store = open_state_store(url)
    time.sleep(max(0.0, start - time.time()))
    try:
        store.transition(
            "ous",
            "X1",
            state="ReadyForProcessing",
            create=True,
            expect_version=0 if must_be_new else None,
        )
        return True
    except StateConflict:
        return False
    finally:
        _done(store)


def _claim_all(url: str, consumer: str) -> list[int]:
    store = open_state_store(url)
    got: list[int] = []
    while batch := store.claim_pending_changes(consumer, limit=7, lease=60):
        assert [c.seq for c in batch] == sorted(c.seq for c in batch)
        got.extend(c.seq for c in batch)
    _done(store)
    return got


@pytest.fixture(scope="module")
def pool():
    with multiprocessing.get_context("spawn").Pool(4) as p:
        yield p


def test_concurrent_increments_lose_no_update(store: StateStore, url: str, pool) -> None:
    store.transition("counter", "c", state="counting", attributes={"n": 0}, create=True)
    pool.starmap(_increment, [(url, 50)] * 4)
    entity = store.get("counter", "c")
    assert entity is not None and entity.attributes["n"] == 200 and entity.version == 201
    assert len(store.history("counter", "c")) == 201


def test_racing_transitions_have_exactly_one_winner(store: StateStore, url: str, pool) -> None:
    store.transition("ous", "X1", state="ReadyForProcessing", create=True)
    start = time.time() + 0.3
    results = pool.starmap(_race, [(url, start)] * 8)
    assert results.count(True) == 1
    assert [c.state for c in store.history("ous", "X1")] == ["ReadyForProcessing", "Processing"]


def test_racing_different_moves_never_make_an_illegal_one(
    store: StateStore, url: str, pool
) -> None:
    for state in HAPPY_PATH[:4]:
        store.transition("ous", "X1", state=state, create=True)
    # From Reviewing both are legal; once one is made, the other is not.
    targets = ["Verified", "ReadyForProcessing"] * 4
    start = time.time() + 0.3
    results = pool.starmap(_move, [(url, start, t) for t in targets])
    winner = store.get("ous", "X1").state  # type: ignore[union-attr]
    assert winner in ("Verified", "ReadyForProcessing")
    expected = ["moved" if t == winner else "IllegalTransition" for t in targets]
    assert results == expected
    lifecycle = store.lifecycle("ous")
    assert lifecycle is not None
    history = store.history("ous", "X1")
    for change in history[1:]:
        lifecycle.check(change.from_state, change.state)  # type: ignore[arg-type]
    assert [c.state for c in history[4:]] == [winner] * 4


def test_racing_creations_make_one_entity(store: StateStore, url: str, pool) -> None:
    start = time.time() + 0.3
    assert pool.starmap(_create, [(url, start, True)] * 4).count(True) == 1
    assert [c.from_state for c in store.history("ous", "X1")] == [None]
    # Without expect_version, every creator succeeds: the later ones find it there.
    store.transition("ous", "X2", state="ReadyForProcessing", create=True)
    start = time.time() + 0.3
    assert pool.starmap(_create, [(url, start, False)] * 4) == [True] * 4
    history = store.history("ous", "X1")
    assert [c.from_state for c in history] == [None] + ["ReadyForProcessing"] * 4
    assert store.get("ous", "X1").version == 5  # type: ignore[union-attr]


def test_claims_are_atomic_across_processes(store: StateStore, url: str, pool) -> None:
    for i in range(150):
        store.transition("ous", f"X{i}", state="ReadyForProcessing", create=True)
    claimed = pool.starmap(_claim_all, [(url, f"relay-{i}") for i in range(4)])
    everything = [seq for got in claimed for seq in got]
    assert len(everything) == len(set(everything)) == 150
    assert store.claim_pending_changes("late") == []


def test_expired_claims_are_claimable_again_and_published_ones_never(store: StateStore) -> None:
    for state in HAPPY_PATH[:2]:
        store.transition("ous", "X1", state=state, create=True)
    store.transition("ous", "X2", state="ReadyForProcessing", create=True)
    first = store.claim_pending_changes("relay-a", limit=2, lease=0.2)
    assert [c.state for c in first] == ["ReadyForProcessing", "Processing"]
    second = store.claim_pending_changes("relay-b", limit=10, lease=0.2)
    assert [(c.id, c.state) for c in second] == [("X2", "ReadyForProcessing")]
    store.mark_published([first[0].seq])
    time.sleep(0.25)  # relay-a "died": its lease on the second change expired
    again = store.claim_pending_changes("relay-b", limit=10, lease=30)
    assert [c.seq for c in again] == [first[1].seq, second[0].seq]
    store.mark_published([c.seq for c in again])
    time.sleep(0.05)
    assert store.claim_pending_changes("relay-c") == []


# ---- the steps, through recipes ------------------------------------------------------

LAUNCH_AND_PROCESS = f"""
recipe: process
inputs:
  ous: {{type: string, positional: true}}
steps:
  - id: launch
    uses: set-state
    with:
      kind: ous
      id: "{{{{ inputs.ous }}}}"
      state: ReadyForProcessing
      create: true
      lifecycle: {OUS_LIFECYCLE}
      attributes: {{exec: EU}}
  - uses: set-state
    with: {{kind: ous, id: "{{{{ inputs.ous }}}}", state: Processing, expect: ReadyForProcessing}}
  - uses: set-state
    with: {{kind: ous, id: "{{{{ inputs.ous }}}}", state: ReadyForReview, attributes: {{report: r.xml}}}}
  - id: seen
    uses: get-state
    with: {{kind: ous, id: "{{{{ inputs.ous }}}}"}}
  - id: ready
    uses: wait-state
    with: {{kind: ous, id: "{{{{ inputs.ous }}}}", until: [ReadyForReview, ProcessingProblem]}}
outputs:
  state: "{{{{ steps.seen.outputs.state }}}}"
  attributes: "{{{{ steps.seen.outputs.attributes }}}}"
  reached: "{{{{ steps.ready.outputs.reached }}}}"
"""


def effects(out: str) -> list[tuple[str, list[dict]]]:
    return [(s["id"], s["effects"]) for s in json.loads(out)["steps"]]


def test_set_state_dry_run_is_faithful_and_writes_nothing(
    cli, tmp_path: Path, wsrun_home: Path, url: str
) -> None:
    recipe = write(tmp_path / "process.yaml", LAUNCH_AND_PROCESS)
    dry = cli(recipe, "uid://X1/X1/Xb0", "--dry-run", "--json")
    assert dry.code == 0, dry.err
    assert not (wsrun_home / "state.db").exists(), "a dry run must not write the store"
    with open_state_store(url) as untouched:
        assert untouched.count() == 0 and untouched.lifecycle("ous") is None
        assert untouched.claim_pending_changes("relay") == []
    real = cli(recipe, "uid://X1/X1/Xb0", "--json")
    assert real.code == 0, real.err
    assert effects(dry.out) == effects(real.out)
    assert effects(real.out)[:3] == [
        (
            "launch",
            [
                {"op": "record", "path": str(OUS_LIFECYCLE), "target": url, "lifecycle": "ous"},
                {
                    "op": "set_state",
                    "path": "ous/uid://X1/X1/Xb0",
                    "target": url,
                    "from": None,
                    "to": "ReadyForProcessing",
                    "substate": None,
                    "attributes": {"exec": "EU"},
                },
            ],
        ),
        (
            "#2",
            [
                {
                    "op": "set_state",
                    "path": "ous/uid://X1/X1/Xb0",
                    "target": url,
                    "from": "ReadyForProcessing",
                    "to": "Processing",
                    "substate": None,
                }
            ],
        ),
        (
            "#3",
            [
                {
                    "op": "set_state",
                    "path": "ous/uid://X1/X1/Xb0",
                    "target": url,
                    "from": "Processing",
                    "to": "ReadyForReview",
                    "substate": None,
                    "attributes": {"report": "r.xml"},
                }
            ],
        ),
    ]
    expected = {
        "state": "ReadyForReview",
        "attributes": {"exec": "EU", "report": "r.xml"},
        "reached": True,
    }
    assert json.loads(dry.out)["outputs"] == json.loads(real.out)["outputs"] == expected
    store = open_state_store(url)
    assert [c.state for c in store.history("ous", "uid://X1/X1/Xb0")] == HAPPY_PATH[:3]
    assert store.lifecycle("ous") is not None
    assert store.history("ous", "uid://X1/X1/Xb0")[0].actor == json.loads(real.out)["run_id"]


VERIFY_AND_DELIVER = """
recipe: deliver-ous
inputs:
  ous: {type: string, positional: true}
steps:
  - uses: set-state
    with: {kind: ous, id: "{{ inputs.ous }}", state: Verified, expect: Reviewing}
  - uses: set-state
    with: {kind: ous, id: "{{ inputs.ous }}", substate: IngestionTriggered}
  - uses: set-state
    with: {kind: ous, id: "{{ inputs.ous }}", state: DeliveryInProgress}
"""


def test_dry_run_plans_against_earlier_planned_states(cli, tmp_path: Path, url: str) -> None:
    store = open_state_store()
    store.register_lifecycle(load_lifecycle(str(OUS_LIFECYCLE)))
    for state in HAPPY_PATH[:4]:
        store.transition("ous", "X1", state=state, create=True)
    before = snapshot(store)
    recipe = write(tmp_path / "deliver.yaml", VERIFY_AND_DELIVER)
    dry = cli(recipe, "X1", "--dry-run", "--json")
    assert dry.code == 0, dry.err
    assert snapshot(store) == before
    moves = [(e["from"], e["to"], e["substate"]) for _, es in effects(dry.out) for e in es]
    assert moves == [
        ("Reviewing", "Verified", None),
        ("Verified", "Verified", "IngestionTriggered"),
        ("Verified", "DeliveryInProgress", "IngestionTriggered"),
    ]
    printed = cli(recipe, "X1", "--dry-run")
    assert printed.code == 0, printed.err
    assert [line.strip() for line in printed.out.splitlines() if "= state" in line] == [
        "= state ous/X1: Reviewing -> Verified",
        "= state ous/X1: Verified -> Verified [IngestionTriggered]",
        "= state ous/X1: Verified -> DeliveryInProgress [IngestionTriggered]",
    ]
    real = cli(recipe, "X1", "--json")
    assert real.code == 0, real.err
    assert effects(real.out) == effects(dry.out)
    entity = store.get("ous", "X1")
    assert entity is not None and (entity.state, entity.substate) == (
        "DeliveryInProgress",
        "IngestionTriggered",
    )
    # Again: the first step now finds DeliveryInProgress, not Reviewing.
    again = cli(recipe, "X1")
    assert again.code == 1
    assert "ous X1 is DeliveryInProgress, not Reviewing" in again.err


def test_illegal_transition_fails_the_step_and_changes_nothing(
    cli, tmp_path: Path, url: str
) -> None:
    recipe = write(
        tmp_path / "skip.yaml",
        f"""
        recipe: skip
        steps:
          - uses: set-state
            with: {{kind: ous, id: X9, state: ReadyForProcessing, create: true, lifecycle: {OUS_LIFECYCLE}}}
          - uses: set-state
            with: {{kind: ous, id: X9, state: Verified, attributes: {{qa2: Pass}}}}
        """,
    )
    message = "ous X9: ReadyForProcessing -> Verified is not allowed (from ReadyForProcessing: Processing)"
    dry = cli(recipe, "--dry-run")
    assert dry.code == 1 and message in dry.err
    real = cli(recipe)
    assert real.code == 1 and message in real.err
    store = open_state_store()
    entity = store.get("ous", "X9")
    assert entity is not None and entity.state == "ReadyForProcessing" and entity.attributes == {}
    assert len(store.history("ous", "X9")) == 1
    # Again: the lifecycle is registered and X9 is where the first step puts it.
    again = cli(recipe, "--json")
    assert again.code == 1 and effects(again.out)[0] == ("#1", [])


def test_setting_what_is_there_changes_nothing(cli, tmp_path: Path, url: str) -> None:
    store = open_state_store()
    store.transition("job", "J1", state="queued", attributes={"n": 1}, create=True)
    recipe = write(
        tmp_path / "same.yaml",
        """
        recipe: same
        steps:
          - uses: set-state
            with: {kind: job, id: J1, state: queued, attributes: {n: 1}}
        """,
    )
    r = cli(recipe, "--json")
    assert r.code == 0 and effects(r.out) == [("#1", [])]
    assert len(store.history("job", "J1")) == 1
    unknown = write(
        tmp_path / "unknown.yaml",
        """
        recipe: unknown
        steps:
          - uses: set-state
            with: {kind: job, id: J2, state: queued}
        """,
    )
    r = cli(unknown)
    assert r.code == 1 and "no job 'J2' (pass create to make a new one)" in r.err


def test_wait_state_sees_another_thread_and_times_out(cli, tmp_path: Path, url: str) -> None:
    store = open_state_store()
    store.transition("ous", "X1", state="ReadyForProcessing", create=True)
    recipe = write(
        tmp_path / "wait.yaml",
        """
        recipe: wait
        inputs:
          until: {type: string, default: Processing}
          timeout: {type: float, default: 10}
        steps:
          - id: w
            uses: wait-state
            with: {kind: ous, id: X1, until: "{{ inputs.until }}", timeout: "{{ inputs.timeout }}", poll: 0.02}
        outputs:
          waited: "{{ steps.w.outputs.waited }}"
          state: "{{ steps.w.outputs.state }}"
        """,
    )

    def later() -> None:
        time.sleep(0.3)
        open_state_store().transition("ous", "X1", state="Processing")

    thread = threading.Thread(target=later)
    thread.start()
    r = cli(recipe, "--json")
    thread.join()
    assert r.code == 0, r.err
    outputs = json.loads(r.out)["outputs"]
    # It started in ReadyForProcessing: only the other thread's change ends the wait.
    assert outputs["state"] == "Processing" and 0 <= outputs["waited"] < 5
    started = time.monotonic()
    r = cli(recipe, "--until", "Delivered", "--timeout", "0.3")
    assert r.code == 1
    assert "timed out after 0.3s waiting for ous X1 to reach Delivered; it is Processing" in r.err
    assert time.monotonic() - started < 3


def test_wait_state_honours_the_step_timeout(cli, tmp_path: Path, url: str) -> None:
    recipe = write(
        tmp_path / "wait.yaml",
        """
        recipe: wait
        steps:
          - uses: wait-state
            timeout: 0.3s
            with: {kind: ous, id: nobody, until: Delivered, timeout: 100}
        """,
    )
    started = time.monotonic()
    r = cli(recipe)
    assert r.code == 1 and "it does not exist" in r.err
    assert time.monotonic() - started < 3


# ---- wsrun state ---------------------------------------------------------------------


def test_state_commands(cli, tmp_path: Path, url: str) -> None:
    r = cli("state", "lifecycle", OUS_LIFECYCLE)
    assert r.code == 0 and r.out == "registered the lifecycle of ous: 8 states, 10 transitions\n"
    r = cli("state", "lifecycle", "--kind", "ous")
    assert (
        r.code == 0
        and "  Reviewing              -> Verified, ReadyForProcessing, ReadyForReview" in r.out
    )
    assert "  Delivered              -> (final)" in r.out
    r = cli(
        "state",
        "set",
        "ous",
        "X1",
        "ReadyForProcessing",
        "--create",
        "--attr",
        "exec=EU",
        "--attr",
        "n=3",
    )
    assert r.code == 0, r.err
    assert (
        cli("state", "set", "ous", "X1", "Processing", "--expect", "ReadyForProcessing").code == 0
    )
    r = cli("state", "set", "ous", "X1", "Verified")
    assert r.code == 1
    assert r.err == (
        "wsrun state: ous X1: Processing -> Verified is not allowed "
        "(from Processing: ReadyForReview, ProcessingProblem)\n"
    )
    r = cli("state", "set", "ous", "X1", "ReadyForReview", "--expect", "Reviewing")
    assert r.code == 1 and r.err == "wsrun state: ous X1 is Processing, not Reviewing\n"
    r = cli("state", "set", "ous", "X2", "Processing")
    assert r.code == 1 and "no ous 'X2'" in r.err
    assert cli("state", "set", "ous", "X1", "Processing", "--attr", "novalue").code == 2
    r = cli("state", "ls", "--json")
    [entity] = json.loads(r.out)
    assert entity["state"] == "Processing" and entity["attributes"] == {"exec": "EU", "n": 3}
    r = cli("state", "ls", "--state", "Delivered")
    assert r.code == 0 and r.out == ""
    r = cli("state", "show", "ous", "X1")
    assert r.code == 0
    assert (
        "  state     Processing" in r.out
        and "  next      ReadyForReview, ProcessingProblem" in r.out
    )
    assert "(new) -> ReadyForProcessing" in r.out and "by wsrun state set" in r.out
    r = cli("state", "history", "ous", "X1", "--json")
    assert [c["state"] for c in json.loads(r.out)] == ["ReadyForProcessing", "Processing"]
    assert cli("state", "show", "ous", "nope").code == 1
    assert cli("state", "history", "ous", "nope").code == 1
    assert cli("state", "lifecycle").code == 2
    r = cli("state", "lifecycle", "--kind", "request")
    assert r.code == 1 and "no lifecycle registered for 'request'" in r.err
    bad = write(tmp_path / "bad.yaml", "kind: ous\nstates: [A]\ntransitions: [{from: A, to: B}]\n")
    r = cli("state", "lifecycle", bad)
    assert r.code == 2 and r.err == f"{bad}:3:29: unknown state 'B' (states: A)\n"
    r = cli("state", "ls", "--store", "postgresql://nowhere/db")
    assert r.code == 2 and "Traceback" not in r.err


def test_lifecycle_files_are_not_listed_as_recipes(cli) -> None:
    r = cli("recipes")
    assert r.code == 0 and not [
        line for line in r.out.splitlines() if "ous-lifecycle " in line[:30]
    ]
    from test_fidelity import all_recipes

    assert "engine/wsrun/packs/alma/recipes/ous-lifecycle.yaml" not in all_recipes()


def test_world_view_keeps_planned_state_changes() -> None:
    from wsrun.core.effects import Effect, create_dir
    from wsrun.core.fs import WorldView

    view = WorldView()
    change = Effect("set_state", "ous/uid://X1/X1/Xb0", target="sqlite:///s.db", extra={"to": "A"})
    view.record(change)
    view.record(create_dir("/tmp/somewhere-planned"))
    assert view.planned_other == [change]
    assert view.is_dir("/tmp/somewhere-planned") and not view.exists("/ous")


def test_claims_keep_each_entitys_changes_in_order(store: StateStore) -> None:
    store.transition("ous", "X1", state="ReadyForProcessing", create=True)
    store.transition("ous", "X2", state="ReadyForProcessing", create=True)
    store.transition("ous", "X1", state="Processing")
    [first] = store.claim_pending_changes("relay-a", limit=1)
    assert (first.id, first.state) == ("X1", "ReadyForProcessing")
    # X1's next change waits until relay-a has published its first one.
    assert [(c.id, c.state) for c in store.claim_pending_changes("relay-b")] == [
        ("X2", "ReadyForProcessing")
    ]
    store.mark_published([first.seq])
    assert [(c.id, c.state) for c in store.claim_pending_changes("relay-b")] == [
        ("X1", "Processing")
    ]


# ---- PostgreSQL only ------------------------------------------------------------------


def test_postgres_store_refuses_a_schema_behind_with_one_line(pg_empty_url: str, cli) -> None:
    with pytest.raises(StateError) as e:
        open_state_store(pg_empty_url)
    assert "\n" not in str(e.value)
    assert "missing state/0001_state" in str(e.value) and "run `wsrun db upgrade --url" in str(
        e.value
    )
    r = cli("state", "ls", "--store", pg_empty_url)
    assert r.code == 2 and "wsrun db upgrade" in r.err and "Traceback" not in r.err


def test_a_claim_in_progress_elsewhere_holds_back_the_entitys_later_changes(pg_url: str) -> None:
    import psycopg

    from wsrun.core import db

    store = open_state_store(pg_url)
    store.transition("ous", "X1", state="ReadyForProcessing", create=True)
    store.transition("ous", "X1", state="Processing", create=True)
    store.transition("ous", "X2", state="ReadyForProcessing", create=True)
    with psycopg.connect(db.conninfo(pg_url)) as other:  # a relay in the middle of its claim
        other.execute(
            "SELECT seq FROM state_history WHERE id = 'X1' ORDER BY seq LIMIT 1 FOR UPDATE"
        )
        got = store.claim_pending_changes("relay-b")
        assert [(c.id, c.state) for c in got] == [("X2", "ReadyForProcessing")]
        other.rollback()  # that relay claimed nothing after all
    got = store.claim_pending_changes("relay-b")
    assert [(c.id, c.state) for c in got] == [("X1", "ReadyForProcessing"), ("X1", "Processing")]


def test_postgres_urls_open_the_postgres_store(pg_url: str) -> None:
    from wsrun.stores.state.postgres import PostgresStateStore

    assert isinstance(open_state_store(pg_url), PostgresStateStore)
    assert isinstance(
        open_state_store(pg_url.replace("postgresql://", "postgres://", 1)), PostgresStateStore
    )


def test_the_relay_publishes_every_change_once_in_order(store: StateStore, tmp_path: Path) -> None:
    from wsrun.stores.bus import open_bus
    from wsrun.stores.bus.events import relay_state_changes

    bus = open_bus(f"sqlite://{tmp_path}/bus.db")
    bus.declare_queue("watch", ["state.ous.#"])
    for state in HAPPY_PATH[:3]:
        store.transition("ous", "X1", state=state, create=True, attributes={"s": state})
    assert relay_state_changes(store, bus, consumer="relay-a") == 3
    assert relay_state_changes(store, bus, consumer="relay-b") == 0
    received = []
    while (message := bus.claim("watch", "reader")) is not None:
        received.append((message.selector, message.body["from_state"], message.body["attributes"]))
        bus.ack(message)
    assert received == [
        ("state.ous.ReadyForProcessing", None, {"s": "ReadyForProcessing"}),
        ("state.ous.Processing", "ReadyForProcessing", {"s": "Processing"}),
        ("state.ous.ReadyForReview", "Processing", {"s": "ReadyForReview"}),
    ]


def test_a_password_in_the_url_stays_out_of_plans_outputs_and_the_journal(
    cli, tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server trusts local connections, so any password is accepted.
    secret_url = pg_url.replace("postgresql://postgres@", "postgresql://postgres:s3cret@", 1)
    monkeypatch.setenv("WSRUN_STATE_URL", secret_url)
    recipe = write(tmp_path / "process.yaml", LAUNCH_AND_PROCESS)
    dry = cli(recipe, "X1", "--dry-run", "--json")
    real = cli(recipe, "X1", "--json")
    assert dry.code == 0 and real.code == 0, dry.err + real.err
    assert effects(dry.out) == effects(real.out)
    shown = pg_url.replace("postgresql://postgres@", "postgresql://postgres:****@", 1)
    assert {e["target"] for _, es in effects(real.out) for e in es} == {shown}
    run = cli("runs", "show", json.loads(real.out)["run_id"], "--json")
    assert run.code == 0 and "X1" in run.out
    assert "s3cret" not in dry.out + dry.err + real.out + real.err + run.out
    assert [c.state for c in open_state_store(secret_url).history("ous", "X1")] == HAPPY_PATH[:3]


# ---- starting work is a compare-and-set (issue 14) ------------------------------------


def _start(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "wsrun", *args],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(paths: list[Path], procs: list[subprocess.Popen[str]]) -> None:
    deadline = time.monotonic() + 60
    while not all(p.exists() for p in paths):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [
            p.stderr.read() for p in procs if p.poll() is not None and p.stderr
        ]
        time.sleep(0.02)


def _race_recipe(tmp_path: Path, cas: bool) -> Path:
    """Read the OUS, wait until every racer has read it, then claim it."""
    guard = 'expect_version: "{{ steps.ous.outputs.version }}"' if cas else ""
    return write(
        tmp_path / f"race{int(cas)}.yaml",
        f"""
        recipe: race
        inputs:
          n: {{type: string, positional: true}}
        steps:
          - id: ous
            uses: get-state
            with: {{kind: ous, id: X1}}
          - uses: template
            with: {{to: "read-{{{{ inputs.n }}}}", content: read}}
          - uses: wait-files
            with: {{base: ., paths: [go], timeout: 60}}
          - uses: set-state
            with:
              kind: ous
              id: X1
              state: ReadyForProcessing
              attributes: {{launched: "{{{{ inputs.n }}}}"}}
              {guard}
        """,
    )


@pytest.mark.parametrize("cas", [True, False])
def test_of_racers_that_read_the_same_version_exactly_one_wins(
    store: StateStore, tmp_path: Path, cas: bool
) -> None:
    store.transition("ous", "X1", state="ReadyForProcessing", create=True)
    recipe = _race_recipe(tmp_path, cas)
    racers = [_start(str(recipe), str(n), cwd=tmp_path) for n in range(4)]
    _wait_for([tmp_path / f"read-{n}" for n in range(4)], racers)
    (tmp_path / "go").touch()
    codes = [p.wait(timeout=60) for p in racers]
    errors = [p.stderr.read() for p in racers if p.stderr]
    if not cas:  # the control: without the compare-and-set every racer "wins"
        assert codes == [0, 0, 0, 0]
        return
    assert sorted(codes) == [0, 1, 1, 1], errors
    winner = str(codes.index(0))
    assert store.get("ous", "X1").attributes["launched"] == winner  # type: ignore[union-attr]
    assert len(store.history("ous", "X1")) == 2
    refused = [e for code, e in zip(codes, errors, strict=True) if code == 1]
    assert all("ous X1 changed (version 2, expected 1)" in e for e in refused), refused


def test_four_launchers_after_a_qa2_fail_launch_once(
    store: StateStore, tmp_path: Path, wsrun_home: Path
) -> None:
    from wsrun.stores.bus import open_bus

    ous = "uid://X1/X1/Xb0"
    store.transition("ous", ous, state="ReadyForProcessing", create=True)
    for state in ("Processing", "ReadyForReview", "Reviewing", "ReadyForProcessing"):
        store.transition("ous", ous, state=state, attributes={"launched": False})
    args = ("alma/launcher", "2015.1.00657.S", ous, "PipelineCalibration", "EU")
    launchers = [_start(*args, cwd=tmp_path) for _ in range(4)]
    codes = [p.wait(timeout=60) for p in launchers]
    errors = [p.stderr.read() for p in launchers if p.stderr]
    assert sorted(codes) == [0, 1, 1, 1], errors
    bus = open_bus(f"sqlite:///{wsrun_home}/bus.db")
    try:
        assert [m.selector for m in bus.messages()] == ["pipeline.process.EU"]
    finally:
        bus.close()
    assert [c.state for c in store.history("ous", ous)][-2:] == ["ReadyForProcessing"] * 2


def test_a_claim_is_taken_over_by_its_claimant_and_refused_to_others(
    store: StateStore, cli, tmp_path: Path
) -> None:
    recipe = write(
        tmp_path / "claim.yaml",
        """
        recipe: claim
        inputs:
          token: {type: string, positional: true}
        steps:
          - uses: set-state
            with: {kind: ous, id: X1, state: Processing, expect: ReadyForProcessing, claim: "{{ inputs.token }}"}
        """,
    )
    store.transition("ous", "X1", state="ReadyForProcessing", create=True)
    assert cli(recipe, "m1").code == 0
    other = cli(recipe, "m2")
    assert other.code == 1 and "ous X1 is already Processing, claimed by m1" in other.err
    again = cli(recipe, "m1")  # the same message redelivered: takes it over
    assert again.code == 0, again.err
    ous = store.get("ous", "X1")
    assert ous is not None and ous.attributes["claim"] == "m1"
    assert [c.state for c in store.history("ous", "X1")] == ["ReadyForProcessing", "Processing"]
