"""Read a tar archive through, to vouch for it before it is staged or ingested.

A calibration tables tar or a weblog tgz that is not a whole tar archive (a
random file with the right name, a download cut short) would otherwise be
archived as if it were one and only found out when someone unpacks it years
later. ``read_through`` reads every header and all member data, the
end-of-archive marker and, for a compressed archive, the whole compressed
stream up to its own check (gzip's CRC and length, bz2's and xz's checks).
Tar archives inside (a ``*.caltables.tgz`` in a caltables tar) are read
through the same way. ``read_zip_through`` does the same for a zip (an ALMA
weblog): every member read and checked against its CRC.
"""

from __future__ import annotations

import os
import zlib
from typing import BinaryIO, Protocol

from wsrun.formats.tarball import BLOCK, sniff
from wsrun.formats.tarread import (
    FILE_TYPES,
    CorruptArchive,
    TarReader,
    is_corrupt,
    open_decompressed,
)

#: File names taken for tar archives (any compression the tar step writes).
TAR_SUFFIXES = (
    ".tar",
    ".tar.gz",
    ".tgz",
    ".tar.bz2",
    ".tbz2",
    ".tar.xz",
    ".txz",
    ".tar.zst",
    ".tzst",
)
#: How deep tar archives inside tar archives are read through.
MAX_DEPTH = 3
_CHUNK = 1 << 20


class Readable(Protocol):
    def read(self, n: int = -1) -> bytes: ...


def is_tar_name(name: str) -> bool:
    return os.path.basename(name).lower().endswith(TAR_SUFFIXES)


def read_zip_through(f: BinaryIO) -> int:
    """Read every member of the zip archive ``f`` (seekable) and check its CRC;
    the number of members. Raises CorruptArchive with a one-line reason."""
    import zipfile

    try:
        with zipfile.ZipFile(f) as z:
            bad = z.testzip()
            members = len(z.infolist())
    except zipfile.BadZipFile as e:
        raise CorruptArchive(f"not a whole zip archive ({e})") from None
    except (EOFError, zlib.error) as e:
        raise CorruptArchive(f"truncated or damaged zip data ({e})") from None
    if bad is not None:
        raise CorruptArchive(f"member {bad} fails its CRC check")
    if members == 0:
        raise CorruptArchive("an empty zip archive")
    return members


class _Prepended:
    """``head`` followed by the rest of ``f``: a stream whose first bytes were
    already read to find its compression."""

    def __init__(self, head: bytes, f: Readable) -> None:
        self.head = head
        self.f = f

    def read(self, n: int = -1) -> bytes:
        if self.head:
            data = self.head if n < 0 else self.head[:n]
            self.head = self.head[len(data) :]
            if n < 0:
                data += self.f.read()
            return data
        return self.f.read(n)

    def readable(self) -> bool:
        return True


class _MemberData:
    """The data of the current member of ``reader``, as a stream."""

    def __init__(self, reader: TarReader) -> None:
        self.reader = reader

    def read(self, n: int = -1) -> bytes:
        return self.reader.read(self.reader.left if n < 0 else n)

    def readable(self) -> bool:
        return True


def read_through(f: Readable, depth: int = 0) -> int:
    """Read the tar archive ``f`` (any compression) to its end; the number of
    members. Raises CorruptArchive with a one-line reason when it is not a
    whole tar archive."""
    head = b""
    while len(head) < 8 and (more := f.read(8 - len(head))):
        head += more
    if not head:
        raise CorruptArchive("an empty file, not a tar archive")
    compression = sniff(head)
    if compression == "zip":
        raise CorruptArchive("a zip file, not a tar archive")
    try:
        stream = open_decompressed(_Prepended(head, f), compression)  # type: ignore[arg-type]
        return _read_members(TarReader(stream), depth)
    except CorruptArchive:
        raise
    except EOFError:
        raise CorruptArchive("truncated: the compressed data ends early") from None
    except (zlib.error, OSError) as e:
        if isinstance(e, OSError) and not is_corrupt(e):
            raise  # an I/O error, not bad data
        raise CorruptArchive(f"damaged compressed data ({e})") from None
    except Exception as e:
        if is_corrupt(e):  # lzma, zstandard
            raise CorruptArchive(f"damaged compressed data ({e})") from None
        raise


def _read_members(reader: TarReader, depth: int) -> int:
    members = 0
    last = None
    while True:
        start = reader.pos + reader.left + reader.pad  # where the next header is
        try:
            h = reader.next()
        except CorruptArchive as e:
            if members == 0:
                raise CorruptArchive(f"not a tar archive ({e})") from None
            what = "truncated" if "unexpected end" in str(e) else "damaged"
            raise CorruptArchive(f"{what}: {e} after member {last}") from None
        if h is None:
            break
        members += 1
        last = h.name
        if h.type in FILE_TYPES and depth < MAX_DEPTH and is_tar_name(h.name):
            try:
                read_through(_MemberData(reader), depth + 1)
            except CorruptArchive as e:
                raise CorruptArchive(f"member {h.name}: {e}") from None
        try:
            while reader.left:
                reader.read(min(reader.left, _CHUNK))
        except CorruptArchive:
            raise CorruptArchive(f"truncated in the data of member {h.name}") from None
    if members == 0:
        raise CorruptArchive("not a tar archive (no member before the end)")
    if reader.pos - start != BLOCK:
        raise CorruptArchive(f"truncated: no end-of-archive marker after member {last}")
    while chunk := reader.f.read(_CHUNK):
        if chunk.strip(b"\x00"):
            raise CorruptArchive(f"data after the end of the archive (after member {last})")
    return members
