"""What goes into the archive and what comes out: the records the store and its
metadata database both speak, kept apart so neither imports the other."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from wsrun.core.spool import Spool

# ---- what goes in -----------------------------------------------------------


@dataclass
class FileSpec:
    """One file of a product: its name in the archive, where it is, its size."""

    name: str
    source: str
    size: int
    mtime_ns: int = 0


class FileSpool(Spool[FileSpec]):
    """A product's files: a list while few, spooled to disk when an execution
    block's directory holds a million (wsrun.core.spool), with their count and
    total size kept as they are appended."""

    def __init__(self, items: Iterable[FileSpec] = ()) -> None:
        self.bytes = 0
        super().__init__(items)

    def append(self, item: FileSpec) -> None:
        self.bytes += item.size
        super().append(item)

    def _encode(self, item: FileSpec) -> Any:
        return (item.name, item.source, item.size, item.mtime_ns)

    def _decode(self, record: Any) -> FileSpec:
        return FileSpec(*record)


@dataclass
class ProductSpec:
    """A product to ingest; its locator is chosen before the ingest starts."""

    locator: str
    type: str
    filename: str
    #: A list, or a FileSpool when there may be very many.
    files: Sequence[FileSpec]
    ancillary: list[ProductSpec] = field(default_factory=list)


@dataclass
class IngestRequest:
    telescope: str
    ingestion_path: str
    #: Science products, each with its own ancillary products.
    products: list[ProductSpec]
    #: Ancillary products of the whole output group.
    ancillary: list[ProductSpec] = field(default_factory=list)
    #: Locators of the products the science products derive from.
    inputs: list[str] = field(default_factory=list)
    reingest: bool = False
    manifest: Any = None
    metadata: Any = None

    def all_products(self) -> Iterator[tuple[ProductSpec, str | None, bool]]:
        """Every product, with the locator of the science product it belongs to
        (None for science products and group ancillaries) and whether it is a
        science product."""
        for p in self.products:
            yield p, None, True
            for a in p.ancillary:
                yield a, p.locator, False
        for a in self.ancillary:
            yield a, None, False


def new_locator(telescope: str, type_: str) -> str:
    return f"uid://{telescope.lower()}/{type_}/{uuid.uuid4()}"


# ---- what comes out ---------------------------------------------------------


@dataclass
class StoredFile:
    name: str
    size: int
    sha256: str


@dataclass
class ProductRecord:
    locator: str
    type: str
    telescope: str
    filename: str
    ingestion_path: str
    ingested: float
    science: bool
    #: The science product this is an ancillary of, if any.
    parent: str | None = None
    files: list[StoredFile] = field(default_factory=list)
    #: Locators this product derives from, and those derived from it.
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    ancillary: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "locator": self.locator,
            "type": self.type,
            "telescope": self.telescope,
            "filename": self.filename,
            "ingestion_path": self.ingestion_path,
            "ingested": self.ingested,
            "science": self.science,
            "parent": self.parent,
            "files": [f.__dict__ for f in self.files],
            "inputs": self.inputs,
            "outputs": self.outputs,
            "ancillary": self.ancillary,
        }


@dataclass
class Problem:
    """A stored file that is missing or whose content changed."""

    locator: str
    name: str
    sha256: str
    issue: str  # "missing" or "checksum mismatch" or "size mismatch"
