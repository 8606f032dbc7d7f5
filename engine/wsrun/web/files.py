"""Weblogs and caches: the configured directories as static files.

Only the directories named in the configuration (``wsrun serve --dir
NAME=PATH``, setting ``wsrun.web.dirs``) are served. A path that leaves its
directory, by ``..`` or through a symbolic link, is refused with 403. Files
are served with a sandboxing Content-Security-Policy, so a weblog's scripts run
but cannot act as this application (read its pages, post its forms).
"""

from __future__ import annotations

import os
import stat
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Route

from wsrun.web.common import api, not_found, render

SANDBOX = {
    "Content-Security-Policy": "sandbox allow-scripts allow-popups allow-downloads",
    "X-Content-Type-Options": "nosniff",
}


def inside(root: str, relative: str) -> str:
    """The real path of ``relative`` under ``root``; 403 when it leaves ``root``."""
    if "\0" in relative or os.path.isabs(relative):
        raise HTTPException(403, "path outside the served directory refused")
    base = os.path.realpath(root)
    target = os.path.realpath(os.path.join(base, relative))
    if not _within(base, target):
        raise HTTPException(403, "path outside the served directory refused")
    return target


def _within(base: str, path: str) -> bool:
    return path == base or os.path.commonpath([base, path]) == base


def located(request: Request) -> tuple[str, str, str]:
    """(root name, relative path, real path) of a request; 404 for unknown ones."""
    dirs: dict[str, str] = request.app.state.config.dirs
    name = request.path_params["root"]
    if name not in dirs:
        raise not_found(f"no served directory '{name}'")
    relative = request.path_params.get("path", "")
    target = inside(dirs[name], relative)
    if not os.path.exists(target):
        raise not_found(f"no file '{relative}' in '{name}'")
    return name, relative, target


def listing(target: str, root: str) -> list[dict[str, Any]]:
    """A directory's entries, directories first, each with size and mtime.
    A symbolic link leading out of ``root`` is listed as a link, with nothing
    about its target (following it is refused anyway)."""
    base = os.path.realpath(root)
    entries = []
    with os.scandir(target) as it:
        for e in it:
            if e.is_symlink() and not _within(base, os.path.realpath(e.path)):
                entries.append(
                    {"name": e.name, "dir": False, "size": None, "modified": None, "link": True}
                )
                continue
            try:
                st = e.stat()
            except OSError:  # a dangling link
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            entries.append(
                {
                    "name": e.name + ("/" if is_dir else ""),
                    "dir": is_dir,
                    "size": None if is_dir else st.st_size,
                    "modified": st.st_mtime,
                }
            )
    entries.sort(key=lambda e: (not e["dir"], e["name"]))
    return entries


async def roots_page(request: Request) -> Response:
    return render(request, "files_roots.html", dirs=request.app.state.config.dirs)


async def roots_api(request: Request) -> Response:
    """The served directories.
    ---
    summary: Directories the file browser serves, by name
    responses:
      200: {description: "{name: path}"}
    """
    return api(request.app.state.config.dirs)


async def browse(request: Request) -> Response:
    name, relative, target = located(request)
    root = request.app.state.config.dirs[name]
    if os.path.isdir(target):
        if not request.url.path.endswith("/"):
            return RedirectResponse(request.url.path + "/", 307)
        parts = [p for p in relative.split("/") if p]
        crumbs = [
            (p, "/files/" + name + "/" + "/".join(parts[: i + 1]) + "/")
            for i, p in enumerate(parts)
        ]
        return render(
            request, "files.html", root=name, crumbs=crumbs, entries=listing(target, root)
        )
    return FileResponse(target, headers=SANDBOX)


async def browse_api(request: Request) -> Response:
    """A directory's entries.
    ---
    summary: List a directory of a served root
    responses:
      200: {description: Entries with name, dir, size, modified}
      403: {description: The path leaves the served directory}
      404: {description: No such root or path}
    """
    name, _, target = located(request)
    if not os.path.isdir(target):
        raise HTTPException(400, "not a directory; GET /files/... for the file")
    return api(listing(target, request.app.state.config.dirs[name]))


routes = [
    Route("/files", roots_page),
    Route("/files/{root}", browse),
    Route("/files/{root}/{path:path}", browse),
    Route("/api/files", roots_api),
    Route("/api/files/{root}", browse_api),
    Route("/api/files/{root}/{path:path}", browse_api),
]
