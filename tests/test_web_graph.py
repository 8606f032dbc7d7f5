"""Pictures: ``wsrun graph`` (DOT, Mermaid, SVG) and the same on the web pages."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, write

REVIEW = ROOT / "engine" / "wsrun" / "packs" / "alma" / "recipes" / "aqua-qa2-review.yaml"
LIFECYCLE = ROOT / "engine" / "wsrun" / "packs" / "alma" / "recipes" / "ous-lifecycle.yaml"


def need_dot() -> None:
    if shutil.which("dot") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Graphviz's dot must be installed under CI (make tools)")
        pytest.skip("Graphviz's dot is not installed (apt-get install graphviz)")


def test_recipe_graph_as_dot(cli, tmp_path: Path) -> None:
    recipe = write(
        tmp_path / "r.yaml",
        """
        recipe: demo
        "on": {message: demo.go}
        inputs:
          tar: {type: bool}
        steps:
          - id: find
            uses: find
            with: {root: /tmp}
          - id: pack
            if: inputs.tar
            uses: tar
            with: {source: /tmp, to: /tmp/x.tar}
          - id: copy
            uses: copy
            with: {sources: "{{ steps.find.outputs.files }}", to: /tmp/y}
        on_failure:
          - id: tidy
            uses: remove
            with: {path: /tmp/y}
        """,
    )
    r = cli("graph", recipe)
    assert r.code == 0, r.err
    dot = r.out
    assert dot.startswith('digraph "recipe demo" {')
    assert '"__on" [label="on: message demo.go", shape=ellipse' in dot
    assert '"steps_2" [label="pack\\ntar", shape=box, style="rounded,dashed"];' in dot
    assert '"__on" -> "steps_1";' in dot
    assert '"steps_1" -> "steps_2" [label="if"];' in dot
    assert '"steps_2" -> "steps_3";' in dot
    assert '"steps_1" -> "steps_3" [style=dotted,' in dot  # copy uses find's outputs
    assert 'subgraph "cluster_on_failure"' in dot and '"on_failure_1" [label="tidy\\nremove"' in dot


def test_recipe_graph_as_mermaid(cli) -> None:
    r = cli("graph", "alma/aqua-qa2-review", "--format", "mermaid")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0] == "flowchart TD"
    assert '    n_steps_1["ready<br/>list-state"]' in lines
    assert "  n_steps_1 -->|if| n_steps_2" in lines
    assert "  subgraph on_failure" in lines


def test_lifecycle_graph_has_every_transition(cli) -> None:
    r = cli("graph", "--lifecycle", LIFECYCLE)
    assert r.code == 0, r.err
    edges = re.findall(r'^  "(\w+)" -> "(\w+)"', r.out, re.M)
    assert ("__start", "ReadyForProcessing") in edges
    assert set(edges) - {("__start", "ReadyForProcessing")} == {
        ("ReadyForProcessing", "Processing"),
        ("Processing", "ReadyForReview"),
        ("Processing", "ProcessingProblem"),
        ("ProcessingProblem", "ReadyForProcessing"),
        ("ReadyForReview", "Reviewing"),
        ("Reviewing", "Verified"),
        ("Reviewing", "ReadyForProcessing"),
        ("Reviewing", "ReadyForReview"),
        ("Verified", "DeliveryInProgress"),
        ("DeliveryInProgress", "Delivered"),
    }
    assert '[label="QA2 Pass or SemiPass"]' in r.out


def test_graph_as_svg(cli) -> None:
    need_dot()
    r = cli("graph", "--lifecycle", LIFECYCLE, "--format", "svg")
    assert r.code == 0, r.err
    assert r.out.startswith("<svg") and ">Reviewing</text>" in r.out


def test_graph_usage_errors(cli, tmp_path: Path) -> None:
    assert cli("graph").code == 2
    assert cli("graph", "alma/pipeline", "--lifecycle", LIFECYCLE).code == 2
    assert cli("graph", "alma/pipeline", "--format", "png").code == 2
    r = cli("graph", "no/such-recipe")
    assert r.code == 2 and "no recipe 'no/such-recipe'" in r.err
    bad = write(
        tmp_path / "bad.yaml",
        "kind: ous\nstates: [A, B]\ninitial: C\ntransitions: [{from: A, to: B}]\n",
    )
    r = cli("graph", "--lifecycle", bad)
    assert r.code == 2 and f"{bad}:3:" in r.err and "unknown state 'C'" in r.err


def test_pictures_pages_draw_the_same_graphs(cli, live_server) -> None:
    need_dot()
    server = live_server()
    with httpx.Client(base_url=server.url) as c:
        dot = c.get("/api/pictures/recipe/alma/aqua-qa2-review", params={"format": "dot"})
        assert dot.text == cli("graph", "alma/aqua-qa2-review").out
        page = c.get("/pictures/lifecycle/ous")
        assert page.status_code == 200 and "<svg" in page.text and "Reviewing" in page.text
        index = c.get("/pictures")
        assert 'href="/pictures/recipe/alma/aqua-qa2-review"' in index.text
        assert 'href="/pictures/lifecycle/ous"' in index.text
        assert "alma/ous-lifecycle" not in c.get("/api/pictures").json()["recipes"]
        assert c.get("/api/pictures/lifecycle/ous", params={"format": "png"}).status_code == 400
        assert c.get("/pictures/recipe/../../etc/passwd").status_code == 404


def test_every_packaged_recipe_and_lifecycle_can_be_drawn() -> None:
    from wsrun.stores.state import load_lifecycle
    from wsrun.web import graph
    from wsrun.web.pictures import packaged, recipe_of

    recipes, lifecycles = packaged()
    assert "alma/aqua-qa2-review" in recipes and "nrao/deliver" in recipes
    assert set(lifecycles) >= {"ous"}
    for name in recipes:
        g = graph.recipe_graph(recipe_of(name))
        assert g.nodes, name
        assert graph.to_dot(g).endswith("}\n") and graph.to_mermaid(g).startswith("flowchart TD")
    for path in lifecycles.values():
        assert graph.lifecycle_graph(load_lifecycle(path)).edges
