"""How the run journal stores long effects and outputs: as chunks of items, each
chunk stored once, column by column.

Why chunks: a loose delivery of a million files records the same digests twice
(copy's ``checksums`` and the checksum step's, which lists one file more) and
its group records its steps' effects again. Chunks cut where the items say
(after an item whose path or key hashes to a given pattern, not every N items)
line up again right after the first difference, so the second record stores a
chunk or two instead of a million items.

Why columns: a chunk's effects or files, stored as every path, then every size,
then every mtime (digests as bytes, not hex), compress two to three times
better than JSON lines, where each line's few changing figures sit between
repeated keys.

A blob made of chunks is a *manifest*: a small JSON tree that says where the
chunks go (``E``: a list of effects; ``L``/``M``: a long list or mapping;
``d``/``l``: a dict or list holding some; ``j``: plain JSON). Chunks and
manifests live in the journal's blobs table beside the older blobs (a zstd
frame of JSON text), told apart by their first bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from wsrun.core import zstd

#: zstd's level for chunks and manifests: level 1 compresses columns of paths
#: and sizes as well as level 3 does, and hex digests better (level 3 finds
#: short matches in them that cost more than they save), at twice the speed.
LEVEL = 1
MAGIC_CHUNK = b"WSC2"
MAGIC_MANIFEST = b"WSM2"
#: A chunk ends after at least CUT_MIN items, at the first item whose cut key
#: hashes to CUT_MASK's pattern (one in 4,096), and at CUT_MAX items at most:
#: about 5,000 items a chunk, a few hundred for a million files.
CUT_MIN = 1024
CUT_MAX = 16384
CUT_MASK = 4095
#: A plain list or dict of at least SECTION_MIN items is stored in chunks too;
#: a shorter one whose JSON is longer than SECTION_TEXT has each of its items
#: looked at the same way.
SECTION_MIN = 64
SECTION_TEXT = 4096

_HEX = re.compile(r"[0-9a-f]*")


def _cut_key(item: Any) -> str | None:
    """What decides whether a chunk may end after ``item``: its path (effects,
    files of a delivery), the item itself (a list of paths), a mapping's key."""
    if type(item) is str:
        return item
    if type(item) is dict:
        path = item.get("path")
        return path if type(path) is str else None
    if type(item) is tuple:
        return item[0] if type(item[0]) is str else None
    return None


def chunked(items: Iterable[Any]) -> Iterator[list[Any]]:
    """``items`` in content-defined chunks (see CUT_MIN)."""
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) < CUT_MIN:
            continue
        key = _cut_key(item)
        if len(chunk) >= CUT_MAX or (
            key is not None and not zlib.crc32(key.encode("utf-8", "surrogatepass")) & CUT_MASK
        ):
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def encode_chunk(items: list[Any], pairs: bool, encode: Callable[[Any], str]) -> tuple[str, bytes]:
    """(hash, stored bytes) of a chunk of values, or of (key, value) pairs;
    ``encode`` is the journal's JSON encoder (non-JSON values as text)."""
    sections: list[bytes] = []
    if pairs:
        keys = [k if type(k) is str else str(k) for k, _ in items]
        described = [
            "p",
            _column(keys, sections, encode),
            _column([v for _, v in items], sections, encode),
        ]
    else:
        described = ["v", _column(items, sections, encode)]
    header = encode([len(items), described, [len(s) for s in sections]]).encode()
    payload = len(header).to_bytes(4, "big") + header + b"".join(sections)
    return _packed(MAGIC_CHUNK, b"wsrun-chunk\0", payload)


def _column(values: list[Any], sections: list[bytes], encode: Callable[[Any], str]) -> list[Any]:
    """How ``values`` are stored (their bytes appended to ``sections``): hex
    digests as bytes, other text a line each, dicts key by key, the rest JSON."""
    if all(type(v) is str for v in values):
        widths = set(map(len, values))
        joined = "".join(values)
        if len(widths) == 1 and values[0] and not len(values[0]) % 2 and _HEX.fullmatch(joined):
            sections.append(bytes.fromhex(joined))
            return ["x", len(values[0])]
        text = "\n".join(values)
        if text.count("\n") == len(values) - 1:
            sections.append(text.encode("utf-8", "surrogatepass"))
            return ["s"]
    elif len(values) > 1 and all(type(v) is dict for v in values):
        shapes: dict[tuple[Any, ...], int] = {}
        ids = [shapes.setdefault(tuple(v), len(shapes)) for v in values]
        if len(shapes) < 256 and all(type(k) is str for shape in shapes for k in shape):
            columns: dict[str, list[Any]] = {}
            for v in values:
                for k, x in v.items():
                    columns.setdefault(k, []).append(x)
            if len(shapes) > 1:
                sections.append(bytes(ids))
            return [
                "d",
                [list(shape) for shape in shapes],
                len(shapes) > 1,
                [[k, _column(c, sections, encode)] for k, c in columns.items()],
            ]
    sections.append(encode(values).encode())
    return ["j"]


def decode_chunk(stored: bytes, digest: str) -> list[Any]:
    """The items of chunk ``digest``: values, or (key, value) pairs."""
    payload = _unpacked(MAGIC_CHUNK, b"wsrun-chunk\0", stored, digest)
    size = int.from_bytes(payload[:4], "big")
    count, described, lengths = json.loads(payload[4 : 4 + size])
    sections: list[bytes] = []
    at = 4 + size
    for length in lengths:
        sections.append(payload[at : at + length])
        at += length
    feed = iter(sections)
    if described[0] == "p":
        keys = _values(described[1], count, feed)
        return list(zip(keys, _values(described[2], count, feed), strict=True))
    return _values(described[1], count, feed)


def _values(described: list[Any], count: int, feed: Iterator[bytes]) -> list[Any]:
    kind = described[0]
    if kind == "x":
        width = described[1]
        text = next(feed).hex()
        return [text[i : i + width] for i in range(0, count * width, width)]
    if kind == "s":
        return next(feed).decode("utf-8", "surrogatepass").split("\n")
    if kind == "j":
        return json.loads(next(feed))  # type: ignore[no-any-return]
    shapes, several, columns = described[1], described[2], described[3]
    ids = list(next(feed)) if several else [0] * count
    used = Counter(ids)
    having = {k: sum(n for shape, n in used.items() if k in shapes[shape]) for k, _ in columns}
    read = {k: iter(_values(c, having[k], feed)) for k, c in columns}
    return [{k: next(read[k]) for k in shapes[shape]} for shape in ids]


def encode_manifest(tree: Any, encode: Callable[[Any], str]) -> tuple[str, bytes]:
    """(hash, stored bytes) of a manifest."""
    return _packed(MAGIC_MANIFEST, b"wsrun-manifest\0", encode(tree).encode())


def decode_manifest(stored: bytes, digest: str) -> Any:
    return json.loads(_unpacked(MAGIC_MANIFEST, b"wsrun-manifest\0", stored, digest))


def _packed(magic: bytes, domain: bytes, payload: bytes) -> tuple[str, bytes]:
    """(hash of ``payload`` under ``domain``, what is stored: ``magic`` and a zstd frame)."""
    digest = hashlib.sha256(domain + payload).hexdigest()
    return digest, magic + zstd.compress(payload, level=LEVEL)


def _unpacked(magic: bytes, domain: bytes, stored: bytes, digest: str) -> bytes:
    """The payload ``_packed`` stored, checked against its hash: a chunk or
    manifest damaged in a way that still decompresses (or swapped for
    another) is caught here, not read as other effects."""
    payload = zstd.ZstdFile(io.BytesIO(stored[len(magic) :])).read()
    if hashlib.sha256(domain + payload).hexdigest() != digest:
        raise ValueError("its content does not match its hash")
    return payload


def parts(tree: Any) -> Iterator[str]:
    """The hashes of every chunk a manifest refers to."""
    kind, body = tree
    if kind in ("E", "L", "M"):
        for digest, _ in body:
            yield digest
    elif kind == "d":
        for node in body.values():
            yield from parts(node)
    elif kind == "l":
        for node in body:
            yield from parts(node)
