"""What the web application serves: directories, token, page options.

Every value comes from a setting (profile file, environment, ``--set``) and
may be overridden by a ``wsrun serve`` option, so an operator configures the
dashboard the same way as the recipes whose work it shows. The stores are the
ones the engine uses (``$WSRUN_STATE_URL``, ``$WSRUN_BUS_URL``,
``$WSRUN_ARCHIVE_URL`` or their settings), so the pages show what the recipes
and the review decisions write.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from wsrun.core.settings import Settings

#: Setting names (environment: upper case with underscores, e.g. WSRUN_WEB_TOKEN).
TOKEN = "wsrun.web.token"
DIRS = "wsrun.web.dirs"
BOARD_KIND = "wsrun.web.board.kind"
TABLE_KINDS = "wsrun.web.board.tables"
REVIEW_RECIPE = "wsrun.web.review.recipe"
DISTILLERY_SELECTOR = "wsrun.web.distillery.selector"

#: The state-entity kinds the board shows as tables when none are configured.
DEFAULT_TABLE_KINDS = ("pipeline-report", "delivery-status")


@dataclass
class WebConfig:
    """The resolved configuration of one web application instance."""

    #: Required on every request when set (header, cookie or ``?token=``).
    token: str | None = None
    #: The journal's home (default: ``$WSRUN_HOME``).
    home: str | None = None
    #: Directories the file browser serves, by the name used in URLs.
    dirs: dict[str, str] = field(default_factory=dict)
    #: The entity kind whose life-cycle the board draws as columns.
    board_kind: str = "ous"
    #: State-entity kinds shown as tables under the board.
    table_kinds: tuple[str, ...] = DEFAULT_TABLE_KINDS
    #: The recipe a review decision runs (the terminal review's own recipe).
    review_recipe: str = "alma/aqua-qa2-review"
    #: The selector a Distillery request is published on.
    distillery_selector: str = "distillery.process"
    #: Seconds between live updates of a page.
    refresh: float = 1.0
    #: The settings profile and ``--set`` values the server was started with;
    #: the recipes it runs (a review decision) get the same.
    profile: str | None = None
    overrides: dict[str, str] = field(default_factory=dict)


def parse_dirs(text: str) -> dict[str, str]:
    """``name=/path,other=/path`` -> {name: absolute path}; a bad entry is an error."""
    out: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, path = item.partition("=")
        name = name.strip()
        if not sep or not name or not path.strip() or not name.replace("-", "").isalnum():
            raise ValueError(f"expected NAME=DIRECTORY (NAME of letters, digits, -), got {item!r}")
        out[name] = os.path.abspath(os.path.expanduser(path.strip()))
    return out


def config_from_settings(settings: Settings, **options: object) -> WebConfig:
    """The configuration from settings; keyword options (``wsrun serve``'s)
    that are not None win."""

    def value(name: str) -> str | None:
        found = settings.get(name)
        return found.value if found is not None and found.value else None

    config = WebConfig(
        profile=settings.profile,
        token=value(TOKEN),
        dirs=parse_dirs(value(DIRS) or ""),
        board_kind=value(BOARD_KIND) or WebConfig.board_kind,
        table_kinds=tuple(
            k.strip() for k in (value(TABLE_KINDS) or ",".join(DEFAULT_TABLE_KINDS)).split(",")
        ),
        review_recipe=value(REVIEW_RECIPE) or WebConfig.review_recipe,
        distillery_selector=value(DISTILLERY_SELECTOR) or WebConfig.distillery_selector,
    )
    for key, given in options.items():
        if given is not None:
            setattr(config, key, given)
    return config
