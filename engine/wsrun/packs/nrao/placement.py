"""Where a delivery puts each product, and what its delivery.json says.

The part of ``find-products`` (wsrun.packs.nrao.find_products) that, given the
destination, lays the identified products out by type and describes the
delivery for the generic steps that write it: ``copy`` (the placement), ``tar``
(the members) and ``write-json`` (delivery.json, its digests as references).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from wsrun.core import follow
from wsrun.core.fs import WorldView
from wsrun.core.spool import Mapped, PairsDict, Slice, Spool, is_lazy
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
    archive's members, and delivery.json with its digests as references.

    A delivery of a million files holds nothing per file in memory: its
    entries go through spools, and past ``SPILL_AT`` files the per-file parts
    of the outputs (the members, each product's files) are lazy views of
    them (wsrun.core.spool) that the journal and write-json stream. A
    smaller delivery gets plain dicts and lists."""
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
    placed = _place(ctx.fs, products, layout, reserved={SUMS, DOCUMENT, tar_name})
    archive = os.path.join(destination, tar_name) if params.get("tar") else None

    def key(rel: str) -> str:
        """What copy's or tar's `checksums` calls a file: its path, or member name."""
        return f"{root}/{rel}" if archive else os.path.join(destination, rel)

    document = _document(
        source, destination, params.get("url"), prefix, method, metadata, products, placed, key
    )
    members = None
    if archive:
        document["archive"] = {
            "name": tar_name,
            "root": root,
            "bytes": tarball.archive_size(
                tarball.Member(name, "dir" if size is None else "file", path, size or 0)
                for name, path, size in _members(source, root, placed.entries)
            ),
            "sha256": {"$digest": archive},
        }
        pairs = ((name, path) for name, path, _ in _members(source, root, placed.entries))
        members = PairsDict(Spool(pairs)) if placed.lazy else dict(pairs)
    placement = {p.rel: products[i]["path"] for i, p in enumerate(placed.products)}
    return {
        "placement": placement,
        "archive": archive,
        "members": members,
        "delivery": document,
        "files": len(placed.files),
        "bytes": sum(p.bytes for p in placed.products),
    }


#: One directory or file of the delivery: its path in the delivery, "dir" or
#: "file", where its content comes from (symbolic links followed; None for a
#: directory only holding products, images/...), its size.
_Entry = tuple[str, str, "str | None", int]
#: One file of a product: its path in the delivery, size, mtime (ns).
_File = tuple[str, int, int]


@dataclass(slots=True)
class _Product:
    """Where one product lies in the delivery, and its files (a range of ``files``)."""

    rel: str
    kind: str  # "dir" or "file"
    start: int
    stop: int = 0
    bytes: int = 0


@dataclass
class _Placed:
    """Every entry of the delivery in order (parents before children), every
    product file, and each product's place."""

    entries: Spool[_Entry]
    files: Spool[_File]
    products: list[_Product]

    @property
    def lazy(self) -> bool:
        """Too many to hold: the outputs are lazy views of the spools."""
        return self.entries.spilled or self.files.spilled

    def files_of(self, product: _Product) -> Sequence[_File]:
        if self.lazy:
            return Slice(self.files, product.start, product.stop)
        return list(self.files.iter_range(product.start, product.stop))


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _place(
    fs: WorldView, products: list[dict[str, Any]], layout: dict[str, str], reserved: set[str]
) -> _Placed:
    """Every directory and file of the delivery, parents before children,
    walked once into spools."""
    placed = _Placed(Spool(), Spool(), [])
    entries, files = placed.entries, placed.files
    claimed: dict[str, str] = {name: "wsrun" for name in reserved}
    dirs: set[str] = set()
    broken: str | None = None  # the first file whose name holds a line break
    for product in products:
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
                entries.append((d, "dir", None, 0))
        if rel in claimed:
            raise StepError(
                f"{claimed[rel]} and {path} would both be delivered as {rel}", path=path
            )
        claimed[rel] = path
        info = fs.stat(path)
        if info is None:
            raise StepError("product does not exist", path=path)
        real = follow.resolve(fs, path)
        placing = _Product(rel, "file" if info.is_file else "dir", len(files))
        if info.is_file:
            entries.append((rel, "file", real, info.size))
            files.append((rel, info.size, info.mtime_ns))
            placing.bytes = info.size
            broken = broken or _line_break(rel, real)
        elif info.is_dir:
            entries.append((rel, "dir", real, 0))
            for inner, sub_info, sub_real in follow.walk(fs, path):
                inner_rel = rel + os.sep + inner
                if sub_info.is_file:
                    entries.append((inner_rel, "file", sub_real, sub_info.size))
                    files.append((inner_rel, sub_info.size, sub_info.mtime_ns))
                    placing.bytes += sub_info.size
                    broken = broken or _line_break(inner_rel, sub_real)
                else:
                    entries.append((inner_rel, "dir", sub_real, 0))
        else:
            raise StepError("cannot deliver a special file (device, fifo or socket)", path=path)
        placing.stop = len(files)
        placed.products.append(placing)
    if broken is not None:
        raise StepError("cannot deliver a file whose name holds a line break", path=broken)
    return placed


def _line_break(rel: str, source: str) -> str | None:
    return source if "\n" in rel or "\r" in rel else None


def _members(
    source: str, root: str, entries: Iterable[_Entry]
) -> Iterator[tuple[str, str, int | None]]:
    """The archive's members in order, everything below one directory named
    ``root``: (name, real path, size; None for a directory). Directories only
    holding products are stored as the source directory is."""
    yield f"{root}/", source, None
    for rel, kind, real, size in entries:
        if kind == "dir":
            yield f"{root}/{rel}/", real or source, None
        else:
            assert real is not None
            yield f"{root}/{rel}", real, size


def _document(
    source: str,
    destination: str,
    url: str | None,
    prefix: str | None,
    method: str,
    metadata: Any,
    products: list[dict[str, Any]],
    placed: _Placed,
    key: Callable[[str], str],
) -> dict[str, Any]:
    """delivery.json, each digest a reference (``{"$digest": key}``) to the
    ``checksums`` of the step that writes the files, and each directory
    product's checksum that of the list ``sha256sum`` prints for its files
    (``{"$sha256sums": "files"}``: the product's own ``files``, not a second
    list of them for the journal to hold)."""

    def file_item(f: _File) -> dict[str, Any]:
        return {"path": f[0], "bytes": f[1], "mtime_ns": f[2], "sha256": {"$digest": key(f[0])}}

    items: list[dict[str, Any]] = []
    for product, place in zip(products, placed.products, strict=True):
        item: dict[str, Any] = {
            "type": product["type"],
            "name": os.path.basename(place.rel),
            "kind": place.kind,
            "path": place.rel,
        }
        if product.get("attributes"):
            item["attributes"] = dict(product["attributes"])
        item["bytes"] = place.bytes
        files = placed.files_of(place)
        if place.kind == "file":
            item["checksum"] = {"$digest": key(place.rel)}
        else:
            item["checksum"] = {"$sha256sums": "files"}
        item["files"] = Mapped(files, file_item) if is_lazy(files) else list(map(file_item, files))
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
        "files": len(placed.files),
        "bytes": sum(p.bytes for p in placed.products),
        "metadata": metadata,
    }
