"""Reading tar archives member by member, any compression, without ``tarfile``:
headers (GNU, pax and old-style) parsed by hand so a damaged or hostile archive is
refused with a clear error (``CorruptArchive``) instead of half-read.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import BinaryIO

from wsrun.core.fs import FileInfo
from wsrun.formats.tarball import BLOCK, FS_ENCODING, TYPES, Member, padded, sniff


def open_decompressed(raw: BinaryIO, compression: str) -> BinaryIO:
    """A reader of the decompressed bytes of ``raw``."""
    if compression == "none":
        return raw
    if compression == "gz":
        import gzip

        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if compression == "bz2":
        import bz2

        return bz2.BZ2File(raw)  # type: ignore[return-value]
    if compression == "xz":
        import lzma

        return lzma.LZMAFile(raw)  # type: ignore[return-value]
    if compression == "zst":
        from wsrun.core import zstd

        return zstd.ZstdFile(raw)  # type: ignore[return-value]  # every frame; raw stays open
    raise ValueError(compression)


class CorruptArchive(ValueError):
    """The bytes are not a (complete) tar archive."""


@dataclass(slots=True)
class TarHeader:
    """One member as its headers describe it; ``name`` is as stored (a
    directory's may end in ``/``), ``offset`` is where its data starts."""

    name: str
    type: bytes
    size: int
    mode: int
    mtime: int | float
    linkname: str
    offset: int


def _parse_number(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256
        n = int.from_bytes(field[1:], "big")
        return n - 256 ** (len(field) - 1) if field[0] == 0xFF else n
    try:
        return int(field.rstrip(b"\x00 "), 8)
    except ValueError:
        pass
    digits = field.split(b"\x00", 1)[0].strip()
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        raise CorruptArchive(f"bad number {field!r} in a tar header") from None


def _parse_pax(data: bytes) -> dict[str, bytes]:
    """The records of a pax extended header: ``"%d key=value\\n"`` each."""
    out: dict[str, bytes] = {}
    pos = 0
    try:
        while pos < len(data) and data[pos] != 0:
            space = data.index(b" ", pos)
            end = pos + int(data[pos:space])
            key, eq, value = data[space + 1 : end - 1].partition(b"=")
            if not eq or end <= space:
                raise ValueError
            out[key.decode("utf-8", "surrogateescape")] = value
            pos = end
    except ValueError:
        raise CorruptArchive("bad pax extended header") from None
    return out


#: Member types handled by ``untar``; the others are refused by it.
FILE_TYPES = (b"0", b"\x00", b"7")
_META_TYPES = (b"x", b"g", b"L", b"K")


class TarReader:
    """Reads a tar stream member by member, without Python's tarfile (which is
    slow to list: about 90 us a member). Understands v7, ustar, GNU (long
    names, base-256 numbers) and pax headers. Data the caller does not read is
    skipped: by seeking when ``seekable``, otherwise by reading it."""

    def __init__(self, f: BinaryIO, seekable: bool = False) -> None:
        self.f = f
        self.seekable = seekable
        self.pos = 0  # offset in the (decompressed) stream
        self.left = 0  # data of the current member not read yet
        self.pad = 0
        self.globals: dict[str, bytes] = {}

    def _read_upto(self, n: int) -> bytes:
        """``n`` bytes, fewer only at the end of the stream (decompressors may
        return short reads before it)."""
        data = self.f.read(n)
        while len(data) < n:
            more = self.f.read(n - len(data))
            if not more:
                break
            data += more
        self.pos += len(data)
        return data

    def _read(self, n: int) -> bytes:
        data = self._read_upto(n)
        if len(data) != n:
            raise CorruptArchive("unexpected end of archive")
        return data

    def _skip(self, n: int) -> None:
        if self.seekable:
            self.f.seek(n, os.SEEK_CUR)
            self.pos += n
            return
        while n:
            k = min(n, 1 << 20)
            self._read(k)
            n -= k

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes of the current member's data."""
        data = self._read(min(n, self.left))
        self.left -= len(data)
        return data

    def next(self) -> TarHeader | None:
        """The next member, or None at the end of the archive."""
        self._skip(self.left + self.pad)
        self.left = self.pad = 0
        pax: dict[str, bytes] = {}
        long_name = long_link = None
        while True:
            block = self._read_upto(BLOCK)
            if block[:1] in (b"", b"\x00") and not block.strip(b"\x00"):
                return None  # end marker, or end of file (GNU tar accepts both)
            if len(block) != BLOCK:
                raise CorruptArchive("unexpected end of archive")
            # The checksum is the byte sum with its own field counted as spaces;
            # adler32's low half is 1 + the byte sum mod 65521, and fast.
            expected = _parse_number(block[148:156]) + sum(block[148:156]) - 256
            if zlib.adler32(block) & 0xFFFF != (1 + expected) % 65521:
                raise CorruptArchive(f"bad header checksum at offset {self.pos - BLOCK}")
            typeflag = block[156:157]
            size = _parse_number(block[124:136])
            if typeflag in _META_TYPES:
                data = self._read(padded(size))[:size]
                if typeflag == b"x":
                    pax = _parse_pax(data)
                elif typeflag == b"g":
                    self.globals.update(_parse_pax(data))
                elif typeflag == b"L":
                    long_name = data.split(b"\x00", 1)[0]
                else:
                    long_link = data.split(b"\x00", 1)[0]
                continue
            break
        fields = {**self.globals, **pax} if self.globals or pax else pax
        name = block[:100].split(b"\x00", 1)[0]
        if block[257:263] == b"ustar\x00" and block[345] != 0:  # POSIX ustar name prefix
            name = block[345:500].split(b"\x00", 1)[0] + b"/" + name
        name = fields.get("path", long_name or name)
        linkname = fields.get("linkpath", long_link or block[157:257].split(b"\x00", 1)[0])
        try:
            if "size" in fields:
                size = int(fields["size"])
            mtime: int | float = _parse_number(block[136:148])
            if "mtime" in fields:
                value = fields["mtime"]
                mtime = float(value) if b"." in value else int(value)
        except ValueError:
            raise CorruptArchive("bad pax size or mtime") from None
        if typeflag in (b"1", b"2", b"3", b"4", b"5", b"6"):
            size = 0  # no data follows links, devices and directories
        self.left = size
        self.pad = -size % BLOCK
        return TarHeader(
            name.decode(FS_ENCODING, "surrogateescape"),
            typeflag,
            size,
            _parse_number(block[100:108]),
            mtime,
            linkname.decode(FS_ENCODING, "surrogateescape"),
            self.pos,
        )


def open_tar(
    path: str, opener: Callable[[str], BinaryIO] = lambda p: open(p, "rb")
) -> tuple[BinaryIO, str, TarReader]:
    """Open the tar at ``path`` whatever its compression (found from its first
    bytes): the raw file (to close), the compression, and a reader."""
    raw = opener(path)
    try:
        compression = sniff(raw.read(8))
        raw.seek(0)
        if compression == "zip":
            raise CorruptArchive("a zip file, not a tar archive")
        return (
            raw,
            compression,
            TarReader(open_decompressed(raw, compression), compression == "none"),
        )
    except BaseException:
        raw.close()
        raise


def is_corrupt(e: BaseException) -> bool:
    """True when reading an archive failed on bad data, False for an I/O error
    the runner should report as such."""
    if isinstance(e, OSError):
        return e.errno is None  # gzip and bz2 report bad data as OSError without errno
    import lzma
    import zipfile

    from wsrun.core import zstd

    return isinstance(
        e,
        CorruptArchive
        | EOFError
        | zlib.error
        | lzma.LZMAError
        | zstd.ZstdError
        | zipfile.BadZipFile,
    )


def holds(
    path: str,
    opener: Callable[[str], BinaryIO],
    existing: FileInfo,
    members: Iterable[Member],
    compression: str,
    size: int | None,
    newest: int,
) -> bool:
    """Whether the archive at ``path`` already holds exactly ``members``: as new
    as the newest (ns), of ``size`` when that is known, in ``compression``, and
    with the same headers in the same order. Only headers are read (a
    compressed archive is decompressed as a stream, never recompressed)."""
    from wsrun.core.fs import ContentUnknown

    if not existing.is_file or existing.mtime_ns < newest:
        return False
    if size is not None and existing.size != size:
        return False
    try:
        raw, found, reader = open_tar(path, opener)
    except ContentUnknown:
        return False  # planned by an earlier step of a dry run
    except Exception as e:
        if is_corrupt(e):
            return False
        raise
    try:
        if found != compression:
            return False
        for name, kind, _, msize, mode, mtime, link in members:  # read as they stream
            h = reader.next()
            if h is None or (h.name, h.type, h.size, h.mode, h.mtime, h.linkname) != (
                name,
                TYPES[kind],
                msize,
                mode,
                mtime,
                link,
            ):
                return False
        return reader.next() is None
    except Exception as e:
        if is_corrupt(e):
            return False
        raise
    finally:
        raw.close()
