"""Pictures: a kind's life-cycle (from the store, or a packaged lifecycle file)
and a packaged recipe's steps, drawn by Graphviz as SVG."""

from __future__ import annotations

from functools import cache
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from wsrun.core.resources import packaged_files, packaged_path
from wsrun.web import graph
from wsrun.web.common import api, not_found, render, sources
from wsrun.web.sources import Unavailable

FORMATS = ("svg", "dot", "mermaid")


@cache
def packaged() -> tuple[list[str], dict[str, str]]:
    """Packaged recipe names, and packaged lifecycle files by kind."""
    from wsrun.core.loader import load
    from wsrun.core.recipe import is_lifecycle_document
    from wsrun.stores.state.lifecycle import load_lifecycle

    names: list[str] = []
    lifecycles: dict[str, str] = {}
    for name, path in packaged_files():
        try:
            data = load(str(path)).data
        except Exception:  # a broken file is simply not drawn
            continue
        if is_lifecycle_document(data):
            lifecycles.setdefault(load_lifecycle(str(path)).kind, str(path))
        elif isinstance(data, dict) and "steps" in data:
            names.append(name)
    return names, lifecycles


def lifecycle_or_none(request: Request, kind: str) -> Any:
    """The kind's lifecycle: the store's registered one, else a packaged file's
    (the board has columns before the first OUS registers it), else None."""
    from wsrun.stores.state.lifecycle import load_lifecycle

    try:
        found = sources(request).state.lifecycle(kind)
    except Unavailable:
        found = None
    if found is None and kind in packaged()[1]:
        found = load_lifecycle(packaged()[1][kind])
    return found


def lifecycle_of(request: Request, kind: str) -> Any:
    found = lifecycle_or_none(request, kind)
    if found is None:
        raise not_found(f"no lifecycle for kind '{kind}'")
    return found


def recipe_of(name: str) -> Any:
    """A packaged recipe by name; nothing outside the packaged recipes is read."""
    from wsrun.core.recipe import load_recipe

    if name not in packaged()[0]:
        raise not_found(f"no packaged recipe '{name}'")
    return load_recipe(f"{packaged_path(name)}.yaml")


def _format(request: Request, default: str) -> str:
    fmt = request.query_params.get("format", default)
    if fmt not in FORMATS:
        raise HTTPException(400, f"format must be one of {', '.join(FORMATS)}")
    return fmt


def _picture(request: Request, g: graph.Graph, title: str) -> Response:
    dot = graph.to_dot(g)
    try:
        svg, problem = graph.to_svg(dot), ""
    except graph.GraphvizMissing as e:
        svg, problem = "", str(e)
    return render(
        request,
        "picture.html",
        title=title,
        svg=svg,
        problem=problem,
        dot=dot,
        mermaid=graph.to_mermaid(g),
    )


def _text(request: Request, g: graph.Graph) -> Response:
    fmt = _format(request, "svg")
    try:
        body = graph.render(g, fmt)
    except graph.GraphvizMissing as e:
        raise HTTPException(503, str(e)) from None
    media = {"svg": "image/svg+xml", "dot": "text/vnd.graphviz", "mermaid": "text/plain"}[fmt]
    return Response(body, media_type=media)


async def pictures_page(request: Request) -> Response:
    recipes, lifecycles = packaged()
    kinds = sorted({request.app.state.config.board_kind, *lifecycles})
    return render(request, "pictures.html", recipes=recipes, kinds=kinds)


async def lifecycle_page(request: Request) -> Response:
    kind = request.path_params["kind"]
    return _picture(
        request, graph.lifecycle_graph(lifecycle_of(request, kind)), f"Lifecycle of {kind}"
    )


async def recipe_page(request: Request) -> Response:
    name = request.path_params["name"]
    return _picture(request, graph.recipe_graph(recipe_of(name)), f"Recipe {name}")


async def lifecycle_api(request: Request) -> Response:
    """A lifecycle drawn.
    ---
    summary: A kind's state machine as SVG, DOT or Mermaid (format parameter)
    responses:
      200: {description: The picture}
      404: {description: No lifecycle for this kind}
    """
    return _text(request, graph.lifecycle_graph(lifecycle_of(request, request.path_params["kind"])))


async def recipe_api(request: Request) -> Response:
    """A recipe drawn.
    ---
    summary: A packaged recipe's steps as SVG, DOT or Mermaid (format parameter)
    responses:
      200: {description: The picture}
      404: {description: No such packaged recipe}
    """
    return _text(request, graph.recipe_graph(recipe_of(request.path_params["name"])))


async def recipes_api(request: Request) -> Response:
    """What can be drawn.
    ---
    summary: Packaged recipes and lifecycle kinds that can be drawn
    responses:
      200: {description: "{recipes, lifecycles}"}
    """
    recipes, lifecycles = packaged()
    return api({"recipes": recipes, "lifecycles": sorted(lifecycles)})


routes = [
    Route("/pictures", pictures_page),
    Route("/pictures/lifecycle/{kind}", lifecycle_page),
    Route("/pictures/recipe/{name:path}", recipe_page),
    Route("/api/pictures", recipes_api),
    Route("/api/pictures/lifecycle/{kind}", lifecycle_api),
    Route("/api/pictures/recipe/{name:path}", recipe_api),
]
