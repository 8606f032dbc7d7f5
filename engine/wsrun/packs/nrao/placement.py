"""Where a delivery puts each product, and what its delivery.json says.

The part of ``find-products`` (wsrun.packs.nrao.find_products) that, given the
destination, lays the identified products out by type and describes the
delivery for the generic steps that write it: ``copy`` (the placement), ``tar``
(the members) and ``write-json`` (delivery.json, its digests as references).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wsrun.core import follow
from wsrun.core.fs import WorldView
from wsrun.core.step import StepContext, StepError
from wsrun.formats import tarball

#: Where each product type goes inside the delivery ("" = at the top, by name).
DEFAULT_LAYOUT: dict[str, str] = {
    "execution_block": "",
    "measurement_set": "",
    "calibration_tables": "calibration",
    "flag_versions": "calibration",
    "apply_commands": "calibration",
    "calibration_auxiliary": "calibration",
    "image": "images",
    "thumbnail": "images",
    "weblog": "weblog",
    "qa_report": "reports",
    "ppr": "scripts",
    "script": "scripts",
    "log": "logs",
    "pipeline_manifest": "",
    "other": "",
}
SUMS = "SHA256SUMS"
DOCUMENT = "delivery.json"


def describe(
    params: dict[str, Any],
    ctx: StepContext,
    source: str,
    products: list[dict[str, Any]],
    method: str,
    metadata: Any,
) -> dict[str, Any]:
    """The outputs that describe the delivery: where each product goes, the
    archive's members, and delivery.json with its digests as references."""
    destination = ctx.path(params["destination"])
    prefix = params.get("prefix") or None
    if prefix is not None and (
        "/" in prefix or prefix in (".", "..") or prefix.startswith(".") or "\0" in prefix
    ):
        raise StepError(f"prefix {prefix!r} must be a plain directory name")
    root = prefix or os.path.basename(source.rstrip(os.sep)) or "delivery"
    tar_name = f"{root}.tar"
    layout = {**DEFAULT_LAYOUT, **(params.get("layout") or {})}
    for product in products:
        if _inside(destination, product["path"]) or _inside(product["path"], destination):
            raise StepError(
                f"the destination {destination} and the product overlap", path=product["path"]
            )
    entries = _place(ctx.fs, products, layout, reserved={SUMS, DOCUMENT, tar_name})
    archive = os.path.join(destination, tar_name) if params.get("tar") else None
    members = _members(source, root, entries) if archive else None

    def key(rel: str) -> str:
        """What copy's or tar's `checksums` calls a file: its path, or member name."""
        return f"{root}/{rel}" if archive else os.path.join(destination, rel)

    document = _document(
        source, destination, params.get("url"), prefix, method, metadata, products, entries, key
    )
    if archive and members is not None:
        document["archive"] = {
            "name": tar_name,
            "root": root,
            "bytes": tarball.archive_size(
                tarball.Member(name, "dir" if size is None else "file", path, size or 0)
                for name, (path, size) in members.items()
            ),
            "sha256": {"$digest": archive},
        }
    placement = {e.rel: products[e.product]["path"] for e in entries if e.top}
    files = [e for e in entries if e.kind == "file"]
    return {
        "placement": placement,
        "archive": archive,
        "members": {name: path for name, (path, _) in members.items()} if members else None,
        "delivery": document,
        "files": len(files),
        "bytes": sum(e.size for e in files),
    }


@dataclass(slots=True)
class _Entry:
    """One directory or file of the delivery."""

    rel: str  # its path in the delivery
    kind: str  # "dir" or "file"
    #: Where its content comes from (symbolic links followed); None for a
    #: directory only holding products (images/, ...).
    source: str | None
    size: int = 0
    mtime_ns: int = 0
    #: The product it belongs to (-1: a directory only holding products), and
    #: whether it is the product itself (not a file or directory inside it).
    product: int = -1
    top: bool = False


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _place(
    fs: WorldView, products: list[dict[str, Any]], layout: dict[str, str], reserved: set[str]
) -> list[_Entry]:
    """Every directory and file of the delivery, parents before children."""
    entries: list[_Entry] = []
    claimed: dict[str, str] = {name: "wsrun" for name in reserved}
    dirs: set[str] = set()
    for index, product in enumerate(products):
        path = product["path"]
        name = product.get("name") or os.path.basename(path)
        sub = layout.get(product["type"], layout.get("other", ""))
        if os.path.isabs(sub) or ".." in sub.split("/") or "/" in name or name in ("", ".", ".."):
            raise StepError(f"cannot place product {name!r} in {sub!r}", path=path)
        sub = os.path.normpath(sub) if sub else ""
        rel = os.path.join(sub, name) if sub else name
        parts = sub.split(os.sep) if sub else []
        for i in range(1, len(parts) + 1):
            d = os.path.join(*parts[:i])
            if d not in dirs:
                if d in claimed:
                    raise StepError(f"{claimed[d]} is in the way of the directory {d}", path=path)
                dirs.add(d)
                claimed[d] = f"the directory {d}"
                entries.append(_Entry(d, "dir", None))
        if rel in claimed:
            raise StepError(
                f"{claimed[rel]} and {path} would both be delivered as {rel}", path=path
            )
        claimed[rel] = path
        info = fs.stat(path)
        if info is None:
            raise StepError("product does not exist", path=path)
        real = follow.resolve(fs, path)
        if info.is_file:
            entries.append(_Entry(rel, "file", real, info.size, info.mtime_ns, index, True))
        elif info.is_dir:
            entries.append(_Entry(rel, "dir", real, 0, info.mtime_ns, index, True))
            for inner, sub, sub_real in follow.walk(fs, path):
                kind = "file" if sub.is_file else "dir"
                size = sub.size if sub.is_file else 0
                entries.append(
                    _Entry(rel + os.sep + inner, kind, sub_real, size, sub.mtime_ns, index)
                )
        else:
            raise StepError("cannot deliver a special file (device, fifo or socket)", path=path)
    for e in entries:
        if e.kind == "file" and ("\n" in e.rel or "\r" in e.rel):
            raise StepError("cannot deliver a file whose name holds a line break", path=e.source)
    return entries


def _members(source: str, root: str, entries: list[_Entry]) -> dict[str, tuple[str, int | None]]:
    """The archive's members in order, everything below one directory named
    ``root``: name -> (real path, size; None for a directory). Directories only
    holding products are stored as the source directory is."""
    members: dict[str, tuple[str, int | None]] = {f"{root}/": (source, None)}
    for e in entries:
        if e.kind == "dir":
            members[f"{root}/{e.rel}/"] = (e.source or source, None)
        else:
            assert e.source is not None
            members[f"{root}/{e.rel}"] = (e.source, e.size)
    return members


def _document(
    source: str,
    destination: str,
    url: str | None,
    prefix: str | None,
    method: str,
    metadata: Any,
    products: list[dict[str, Any]],
    entries: list[_Entry],
    key: Callable[[str], str],
) -> dict[str, Any]:
    """delivery.json, each digest a reference (``{"$digest": key}``) to the
    ``checksums`` of the step that writes the files, and each directory
    product's checksum that of the list ``sha256sum`` prints for its files
    (``{"$sha256sums": {path in the product: key}}``)."""
    by_product: dict[int, list[_Entry]] = {}
    for e in entries:
        by_product.setdefault(e.product, []).append(e)
    items: list[dict[str, Any]] = []
    for index, product in enumerate(products):
        top = by_product[index][0]
        files = [e for e in by_product[index] if e.kind == "file"]
        item: dict[str, Any] = {
            "type": product["type"],
            "name": os.path.basename(top.rel),
            "kind": top.kind,
            "path": top.rel,
        }
        if product.get("attributes"):
            item["attributes"] = dict(product["attributes"])
        item["bytes"] = sum(e.size for e in files)
        if top.kind == "file":
            item["checksum"] = {"$digest": key(top.rel)}
        else:
            inner = len(top.rel) + 1
            item["checksum"] = {"$sha256sums": {e.rel[inner:]: key(e.rel) for e in files}}
        item["files"] = [
            {
                "path": e.rel,
                "bytes": e.size,
                "mtime_ns": e.mtime_ns,
                "sha256": {"$digest": key(e.rel)},
            }
            for e in files
        ]
        items.append(item)
    return {
        "version": 1,
        "source": source,
        "destination": destination,
        "url": url,
        "prefix": prefix,
        "identified_by": method,
        "archive": None,
        "products": items,
        "files": sum(len(i["files"]) for i in items),
        "bytes": sum(i["bytes"] for i in items),
        "metadata": metadata,
    }
