"""``wsrun serve`` (the web application) and ``wsrun graph`` (the pictures as text).

Registered in ``wsrun.cli.commands``; the web stack is imported only when a
command runs, so ``wsrun --help`` stays fast.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def serve_command(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8080,
    token: Annotated[
        str | None,
        typer.Option(help="Require this token on every request (default: setting wsrun.web.token)"),
    ] = None,
    dirs: Annotated[
        list[str] | None,
        typer.Option("--dir", help="NAME=DIRECTORY served under /files/NAME/ (repeatable)"),
    ] = None,
    kind: Annotated[
        str | None, typer.Option(help="Entity kind the board shows (default: ous)")
    ] = None,
    profile: Annotated[str | None, typer.Option(help="Settings profile")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE")] = None,
) -> None:
    """Serve the dashboard: runs, life-cycle board, QA2 review, files, Distillery, messages."""
    from wsrun.core import extras

    if not extras.installed("web"):
        print(extras.message("wsrun serve", "web"), file=sys.stderr)
        raise typer.Exit(2)
    import uvicorn

    from wsrun.cli.recipe_args import parse_sets
    from wsrun.core.settings import Settings, SettingsError
    from wsrun.web.app import create_app
    from wsrun.web.config import config_from_settings, parse_dirs

    try:
        overrides = parse_sets(set_ or [])
        settings = Settings(profile=profile, overrides=overrides)
        config = config_from_settings(
            settings,
            overrides=overrides,
            token=token,
            dirs=parse_dirs(",".join(dirs)) if dirs else None,
            board_kind=kind,
        )
    except (SettingsError, ValueError) as e:
        print(f"wsrun serve: {e}", file=sys.stderr)
        raise typer.Exit(2) from None
    if host not in LOOPBACK and not config.token:
        print(
            f"wsrun serve: warning: listening on {host} without a token; anyone who can reach"
            " it can review, re-send and queue (set --token or wsrun.web.token)",
            file=sys.stderr,
        )
    print(f"wsrun serve: http://{host}:{port}/", file=sys.stderr, flush=True)
    uvicorn.run(create_app(config), host=host, port=port, log_level="warning")


def graph_command(
    recipe: Annotated[
        str | None, typer.Argument(help="A recipe file, directory or packaged name")
    ] = None,
    lifecycle: Annotated[
        str | None, typer.Option("--lifecycle", help="Draw this lifecycle YAML file instead")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="dot, mermaid or svg")] = "dot",
) -> None:
    """Print a recipe's steps, or a lifecycle's state machine, as DOT, Mermaid or SVG."""
    from wsrun.web import graph

    if (recipe is None) == (lifecycle is None):
        print(
            "usage: wsrun graph RECIPE | wsrun graph --lifecycle FILE\n"
            "wsrun graph: error: name a recipe or a lifecycle, not both",
            file=sys.stderr,
        )
        raise typer.Exit(2)
    if fmt not in ("dot", "mermaid", "svg"):
        print(f"wsrun graph: unknown format '{fmt}' (dot, mermaid, svg)", file=sys.stderr)
        raise typer.Exit(2)
    if lifecycle is not None:
        from wsrun.stores.state.lifecycle import LifecycleError, load_lifecycle

        try:
            g = graph.lifecycle_graph(load_lifecycle(lifecycle))
        except LifecycleError as e:
            print(str(e), file=sys.stderr)
            raise typer.Exit(2) from None
    else:
        from wsrun.core.recipe import RecipeNotFound, resolve
        from wsrun.core.validate import InvalidRecipe, load_valid

        assert recipe is not None
        try:
            g = graph.recipe_graph(load_valid(resolve(recipe)))
        except RecipeNotFound:
            print(f"wsrun graph: no recipe '{recipe}'", file=sys.stderr)
            raise typer.Exit(2) from None
        except InvalidRecipe as e:
            print(str(e), file=sys.stderr)
            raise typer.Exit(2) from None
    try:
        sys.stdout.write(graph.render(g, fmt))
    except graph.GraphvizMissing as e:
        print(f"wsrun graph: {e}", file=sys.stderr)
        raise typer.Exit(1) from None
