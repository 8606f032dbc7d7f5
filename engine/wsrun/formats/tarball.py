"""Tar writing and compression codecs for the ``tar`` step (and the packs that
write tarballs).

The writer builds GNU-format headers itself instead of using ``tarfile``:
tarfile looks up user and group names for every member and copies all data
through Python buffers, which makes it several times slower than GNU tar. Here
a small file costs an open, an fstat, one read into a shared buffer and a
close; a large file is copied into the archive inside the kernel
(``copy_file_range``). Every member's place in an uncompressed archive is
known in advance, so forked processes write shares of the members at once,
each at its own offset. gz, bz2 and xz compress fixed-size chunks on all
cores; zst uses zstd's own worker threads. The output depends only on the
inputs (never on timing or the number of cores), so the same tree gives the
same bytes.

Reading is ``wsrun.formats.tarread``; the checks before extraction are
``wsrun.formats.extract``.

One piece: headers, the sinks (one per compression) and the forked writers share
the member layout computed up front; reading and extraction checks are separate.
"""

from __future__ import annotations

import errno
import gc
import marshal
import os
import select
import stat as statmod
import sys
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from wsrun.core import spool
from wsrun.core.spool import Spool
from wsrun.core.step import StepError

if TYPE_CHECKING:
    from concurrent.futures import Future

BLOCK = 512
#: GNU tar pads archives to whole records of 20 blocks.
RECORD = 20 * BLOCK
#: Compression levels: lowest, highest, default (those of the command-line tools).
LEVELS = {"gz": (0, 9, 6), "bz2": (1, 9, 9), "xz": (0, 9, 6), "zst": (1, 22, 3)}
_SUFFIXES = (
    (".tar", "none"),
    (".tar.gz", "gz"),
    (".tgz", "gz"),
    (".tar.bz2", "bz2"),
    (".tbz2", "bz2"),
    (".tar.xz", "xz"),
    (".txz", "xz"),
    (".tar.zst", "zst"),
    (".tzst", "zst"),
)
#: Files at least this large go into an uncompressed archive by copy_file_range:
#: one copy in the kernel instead of read plus write. Smaller ones are read into
#: the shared buffer, which is faster for them (measured on ext4: files of
#: 1-64 KiB by a third).
DIRECT_MIN = 1 << 20
#: Files up to this size are read into the buffer with one call.
SMALL = 64 << 10
#: An uncompressed archive is written by up to this many processes (and no
#: more than there are cores); more would mostly contend for the one output file.
MAX_WORKERS = 4
#: Each process gets at least this much work (bytes, each member counting
#: MEMBER_COST more, about what opening and closing a file costs): below it
#: a fork costs more than it saves.
PARALLEL_MIN = 8 << 20
MEMBER_COST = 16 << 10
#: A file bigger than this is written and reported in slices of this size.
PROGRESS_SLICE = 64 << 20
_ZEROS = bytes(RECORD)
_MAGIC = b"ustar  \x00"  # GNU
TYPES = {"file": b"0", "symlink": b"2", "dir": b"5"}
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
FS_ENCODING = sys.getfilesystemencoding()  # os.fsencode without its per-call overhead


def compression_for(path: str) -> str:
    """The compression an archive name asks for: ``x.tar.gz`` -> gz; plain otherwise."""
    name = path.lower()
    for suffix, compression in _SUFFIXES:
        if name.endswith(suffix):
            return compression
    return "none"


def sniff(head: bytes) -> str:
    """The format of a file from its first bytes: a compression, ``zip``, or
    ``none`` (an uncompressed tar, or not an archive at all)."""
    if head.startswith(b"\x1f\x8b"):
        return "gz"
    if head.startswith(b"BZh"):
        return "bz2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zst"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    return "none"


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


# ---- writing ------------------------------------------------------------------


class Member(NamedTuple):
    """One entry to archive: ``name`` as stored (directories end in ``/``),
    read from ``path``. ``mode`` and ``mtime`` (seconds) are as planned; the
    writer stores what the file has when it is read. A tuple, so that a
    million of them spool to disk and back (``MemberSpool``) as plain tuples,
    which the writer and ``tarread.holds`` read by position."""

    name: str
    kind: str  # "file", "dir" or "symlink"
    path: str
    size: int = 0
    mode: int = 0
    mtime: int = 0
    linkname: str = ""


class MemberSpool(Spool[Member]):
    """The members of a big archive, in archive order: a list while short,
    spooled to disk past ``wsrun.core.spool.SPILL_AT`` (a million Member
    objects were over 300 MB). Its records are Members or plain tuples of
    the same fields (what a spool reads back, and what the ``tar`` step makes
    for files: cheaper); readers take the fields by position. As members are
    appended it keeps what the writer needs without another pass: the
    archive's exact size, the files and their bytes, and every
    ``wsrun.core.spool.CHUNK`` members their offset in the archive, where
    forked writers may split the work."""

    def __init__(self, items: Iterable[Member] = ()) -> None:
        self.body = 0  # bytes of the members' headers, data and padding
        self.files = 0
        self.file_bytes = 0
        #: (index, offset in the archive) of every CHUNK-th member.
        self.marks: list[tuple[int, int]] = []
        super().__init__(items)

    def append(self, item: Member) -> None:
        self.extend((item,))

    def extend(self, items: Iterable[Member]) -> None:
        """Append ``items``: one loop over them, a million small members in
        about a second less than one ``append`` call each."""
        head, count, body = self._head, len(self), self.body
        files, file_bytes, marks, every = self.files, self.file_bytes, self.marks, spool.CHUNK
        limit = spool.CHUNK if self._file is not None else spool.SPILL_AT
        try:
            for item in items:
                if type(item) is not tuple:
                    item = tuple(item)  # a Member: marshal takes plain tuples
                name, kind, _, size, _, _, link = item
                if not count % every:
                    marks.append((count, body))
                body += BLOCK + size + (-size % BLOCK)
                if link or len(name) > 100 or not name.isascii():
                    body += _long_bytes(name) + (_long_bytes(link) if link else 0)
                if kind == "file":
                    files += 1
                    file_bytes += size
                head.append(item)
                count += 1
                if len(head) >= limit:
                    self._spill()
                    head, limit = self._head, spool.CHUNK
        finally:
            self.body, self.files, self.file_bytes = body, files, file_bytes

    def size(self) -> int:
        """The exact size of the uncompressed archive of these members."""
        total = 2 * BLOCK + self.body
        return total + (-total % RECORD)


def padded(n: int) -> int:
    return n + (-n % BLOCK)


def _long_bytes(value: str) -> int:
    """Archive bytes of a GNU long-name record for ``value`` (0 if it fits the header)."""
    if len(value) <= 100 and value.isascii():
        return 0
    n = len(value.encode(FS_ENCODING, "surrogateescape"))
    return 0 if n <= 100 else BLOCK + padded(n + 1)


def _span(m: Member) -> int:
    """The bytes ``m`` takes in the archive: headers, data and padding."""
    n = BLOCK + padded(m[3]) + _long_bytes(m[0])
    return n + _long_bytes(m[6]) if m[6] else n


def archive_size(members: Iterable[Member]) -> int:
    """The exact size of the uncompressed archive ``write_tar`` produces."""
    if isinstance(members, MemberSpool):
        return members.size()
    total = 2 * BLOCK + sum(map(_span, members))  # with the end-of-archive marker
    return total + (-total % RECORD)


def _number(value: int, width: int) -> bytes:
    """A numeric header field: octal, or GNU base-256 when that does not fit."""
    if 0 <= value < 8 ** (width - 1):
        return b"%0*o\x00" % (width - 1, value)
    if value >= 0:
        return b"\x80" + value.to_bytes(width - 1, "big")
    return (256**width + value).to_bytes(width, "big")


def _byte_sum(data: bytes) -> int:
    """The sum of up to 256 bytes, fast: adler32's low half is 1 + that sum mod 65521."""
    return (zlib.adler32(data) & 0xFFFF) - 1


_NUMBERS = b"%07o\x00%07o\x00%07o\x00%011o\x00%011o\x00"  # mode, uid, gid, size, mtime
_OCTAL_8 = 8**7  # the numbers that fit an 8-byte field in octal
_OCTAL_12 = 8**11


def header(
    name: bytes,
    typeflag: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    linkname: bytes = b"",
) -> bytes:
    """One 512-byte GNU tar header block (empty user and group names).

    Byte for byte what ``tarfile.TarInfo.tobuf(GNU_FORMAT)`` gives with
    ``uname`` and ``gname`` empty; names longer than 100 bytes need a
    ``long_name`` record before it."""
    if size < _OCTAL_12 and 0 <= mtime < _OCTAL_12 and uid < _OCTAL_8 and gid < _OCTAL_8:
        numbers = _NUMBERS % (mode & 0o7777, uid, gid, size, mtime)
    else:
        numbers = (
            _number(mode & 0o7777, 8)
            + _number(uid, 8)
            + _number(gid, 8)
            + _number(size, 12)
            + _number(mtime, 12)
        )
    head = name[:100].ljust(100, b"\x00") + numbers
    tail = typeflag + linkname[:100].ljust(100, b"\x00") + _MAGIC
    chksum = _byte_sum(head) + _byte_sum(tail) + 8 * 32  # the checksum field counts as spaces
    return head + b"%06o\x00 " % chksum + tail + _ZEROS[: BLOCK - 265]


def long_name(value: bytes, typeflag: bytes) -> bytes:
    """GNU ``././@LongLink`` record carrying a name (``L``) or link target (``K``)."""
    data = value + b"\x00"
    return (
        header(b"././@LongLink", typeflag, 0, 0, 0, len(data), 0)
        + data
        + _ZEROS[: -len(data) % BLOCK]
    )


#: Everything after the checksum field of a header without a link target, by
#: kind; and the byte sum of that tail plus the checksum field (as spaces).
_TAILS = {k: t + bytes(100) + _MAGIC + _ZEROS[: BLOCK - 265] for k, t in TYPES.items()}
_TAIL_SUMS = {k: sum(t + _MAGIC) + 8 * 32 for k, t in TYPES.items()}


def _member_header(m: Member, st: os.stat_result) -> bytes:
    """The header(s) of ``m``, with the mode, owner and mtime of ``st``, for any
    name, link target and numbers (the writer builds the usual short ASCII
    name's header itself, inline)."""
    name = m[0].encode(FS_ENCODING, "surrogateescape")
    link = m[6].encode(FS_ENCODING, "surrogateescape") if m[6] else b""
    prefix = b""
    if len(link) > 100:
        prefix += long_name(link, b"K")
    if len(name) > 100:
        prefix += long_name(name, b"L")
    size = m[3] if m[1] == "file" else 0
    return prefix + header(
        name,
        TYPES[m[1]],
        statmod.S_IMODE(st.st_mode),
        st.st_uid,
        st.st_gid,
        size,
        st.st_mtime_ns // 10**9,
        link,
    )


class SourceChanged(Exception):
    """A file changed between planning and archiving."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def copy_range(
    src: int, dst: int, size: int, offset: int | None = None, dst_offset: int | None = None
) -> None:
    """Copy exactly ``size`` bytes from ``src`` (at ``offset``, else its
    position) to ``dst`` (at ``dst_offset``, else its position), inside the
    kernel when it can."""
    try:
        while size:
            n = os.copy_file_range(src, dst, min(size, 1 << 30), offset, dst_offset)
            if n == 0:
                raise EOFError
            size -= n
            if offset is not None:
                offset += n
            if dst_offset is not None:
                dst_offset += n
        return
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
    while size:  # filesystems without copy_file_range
        n = min(size, 1 << 20)
        data = os.pread(src, n, offset) if offset is not None else os.read(src, n)
        if not data:
            raise EOFError
        if dst_offset is None:
            write_all(dst, data)
        else:
            pwrite_all(dst, data, dst_offset)
            dst_offset += len(data)
        size -= len(data)
        if offset is not None:
            offset += len(data)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


class _PlacedSink:
    """Uncompressed output from ``offset`` on: buffers go straight to the
    archive, files are copied by the kernel. Writes name their offset, so
    processes sharing the file never race for its position."""

    direct = True
    chunk = 1 << 20

    def __init__(self, fd: int, offset: int) -> None:
        self.fd = fd
        self.offset = offset

    def write(self, data: memoryview) -> None:
        pwrite_all(self.fd, data, self.offset)
        self.offset += len(data)

    def copy(self, src: int, size: int) -> None:
        copy_range(src, self.fd, size, dst_offset=self.offset)
        self.offset += size


class _ChunkSink:
    """Compresses fixed-size chunks on all cores and writes them in order;
    subclasses say how in ``write``. The chunk size is fixed, so the output
    does not depend on the number of threads."""

    direct = False
    chunk = 1 << 20

    def __init__(self, fd: int, level: int, threads: int) -> None:
        from concurrent.futures import ThreadPoolExecutor  # not needed by most runs

        self.fd = fd
        self.level = level
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="wsrun-compress")
        self.pending: deque[Future[bytes]] = deque()
        self.limit = threads + 1  # chunks in flight: every thread busy, memory bounded

    def submit(self, fn: Callable[..., bytes], *args: Any) -> None:
        self.pending.append(self.pool.submit(fn, *args))
        while len(self.pending) > self.limit:
            write_all(self.fd, self.pending.popleft().result())

    def close(self) -> None:
        while self.pending:
            write_all(self.fd, self.pending.popleft().result())
        self.pool.shutdown()

    def abort(self) -> None:
        self.pool.shutdown(cancel_futures=True)


def _deflate(data: bytes, dictionary: bytes, level: int) -> bytes:
    if dictionary:
        c = zlib.compressobj(level, zlib.DEFLATED, -15, zdict=dictionary)
    else:
        c = zlib.compressobj(level, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)


class _GzipSink(_ChunkSink):
    """One gzip member made of independently compressed deflate chunks, as
    pigz does: each chunk is primed with the previous 32 KiB, so the ratio
    matches gzip's, and ends on a byte boundary without the final-block bit."""

    def __init__(self, fd: int, level: int, threads: int) -> None:
        super().__init__(fd, level, threads)
        self.crc = 0
        self.size = 0
        self.dictionary = b""
        # magic, deflate, no flags, mtime 0, no extra flags, OS unix
        write_all(fd, b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03")

    def write(self, data: memoryview) -> None:
        chunk = bytes(data)
        self.submit(_deflate, chunk, self.dictionary, self.level)
        self.dictionary = chunk[-32768:]
        self.crc = zlib.crc32(chunk, self.crc)
        self.size += len(chunk)

    def close(self) -> None:
        super().close()
        final = zlib.compressobj(self.level, zlib.DEFLATED, -15).flush()  # an empty last block
        write_all(
            self.fd,
            final + self.crc.to_bytes(4, "little") + (self.size & 0xFFFFFFFF).to_bytes(4, "little"),
        )


class _Bz2Sink(_ChunkSink):
    """Concatenated bzip2 streams (as pbzip2 writes; bzip2 -d reads them all)."""

    chunk = 8 * 900_000

    def write(self, data: memoryview) -> None:
        import bz2

        self.submit(bz2.compress, bytes(data), self.level)


def _xz(data: bytes, level: int) -> bytes:
    import lzma

    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=level)


class _XzSink(_ChunkSink):
    """Concatenated xz streams (xz -d reads them all); 24 MiB chunks, like xz -T."""

    chunk = 24 << 20

    def write(self, data: memoryview) -> None:
        self.submit(_xz, bytes(data), self.level)


class _ZstdSink:
    """One zstd frame, compressed by zstd's worker threads (whose output does
    not depend on their number)."""

    direct = False
    chunk = 1 << 20

    def __init__(self, fd: int, level: int, size: int) -> None:
        from wsrun.core import zstd

        self.out = open(fd, "wb", buffering=1 << 20, closefd=False)
        option = zstd.CompressionParameter
        self.cctx = zstd.ZstdCompressor(
            options={option.compression_level: level, option.nb_workers: cpu_count()}
        )
        self.cctx.set_pledged_input_size(size)  # the frame says its size, as zstd(1) writes

    def write(self, data: memoryview) -> None:
        self.out.write(self.cctx.compress(data))

    def close(self) -> None:
        self.out.write(self.cctx.flush())
        self.out.close()

    def abort(self) -> None:
        self.out.close()


def _sink(fd: int, compression: str, level: int | None, size: int) -> Any:
    level = LEVELS[compression][2] if level is None else level
    if compression == "zst":
        return _ZstdSink(fd, level, size)
    sink = {"gz": _GzipSink, "bz2": _Bz2Sink, "xz": _XzSink}[compression]
    return sink(fd, level, cpu_count())


class _Writer:
    """Archive bytes gathered in one buffer and handed to the sink when it
    holds a chunk; the writer's loop appends to ``buf`` itself."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.cap = sink.chunk
        self.buf = bytearray()
        self.total = 0  # bytes handed to the sink

    def flush(self) -> None:
        if self.buf:
            with memoryview(self.buf) as view:
                self.sink.write(view)
            self.total += len(self.buf)
            self.buf.clear()

    def put(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) >= self.cap:
            self.flush()

    def read_from(self, fd: int, size: int) -> None:
        """Append exactly ``size`` bytes read from ``fd``."""
        buf = self.buf
        while size:
            data = os.read(fd, min(size, self.cap))
            if not data:
                raise EOFError
            buf += data
            size -= len(data)
            if len(buf) >= self.cap:
                self.flush()

    def copy_from(self, fd: int, size: int) -> None:
        """Append exactly ``size`` bytes of ``fd``, copied by the kernel."""
        self.flush()
        self.sink.copy(fd, size)
        self.total += size


def write_tar(
    fd: int,
    members: Sequence[Member],
    compression: str = "none",
    level: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    size: int | None = None,
    parallel: bool = True,
) -> None:
    """Write the archive of ``members`` (in the given order; a list or a
    ``MemberSpool``) to ``fd``, from
    its position (an uncompressed archive needs a seekable ``fd``).

    ``size`` is ``archive_size(members)`` if the caller has it already.
    ``progress(bytes, files)`` is called every few MiB. Raises SourceChanged
    when a file's size or type differs from what was planned, and the
    OSError of a file it cannot read, also when a forked process met them.
    Without ``parallel`` the archive is written front to back by this process
    alone, so what is in the file at any moment is final (a reader may hash it
    as it grows)."""
    if size is None:
        size = archive_size(members)
    if compression == "none":
        if parallel:
            _write_placed(fd, members, progress, size)
        else:
            start = os.lseek(fd, 0, os.SEEK_CUR)
            _write_share(fd, members, start, 0, True, progress)
            os.lseek(fd, start + size, os.SEEK_SET)
        return
    sink = _sink(fd, compression, level, size)
    w = _Writer(sink)
    try:
        _write_members(w, members, progress)
        end = 2 * BLOCK + (-(w.total + len(w.buf) + 2 * BLOCK) % RECORD)
        w.put(bytes(end))
        w.flush()
        sink.close()
    except BaseException:
        sink.abort()
        raise


def _write_members(
    w: _Writer, members: Iterable[Member], progress: Callable[[int, int], None] | None
) -> None:
    """Put the headers and data of ``members`` into ``w`` (not flushed).

    The loop is the writer's cost per member (a million small files): the
    usual header (a short ASCII name, numbers that fit in octal) is built
    here, and a small file is read into the buffer in one call."""
    direct = w.sink.direct
    buf, cap = w.buf, w.cap
    numbers, byte_sum, tails, tail_sums = _NUMBERS, _byte_sum, _TAILS, _TAIL_SUMS
    adler32, file_tail, file_tail_sum = zlib.adler32, _TAILS["file"], _TAIL_SUMS["file"]
    open_, fstat, read, close = os.open, os.fstat, os.read, os.close
    done_bytes = done_files = 0
    for m in members:
        name, kind, path, size, _, _, link = m
        if kind == "file":
            left = size  # bytes not yet reported
            try:
                src = open_(path, _OPEN_FLAGS)
            except (FileNotFoundError, NotADirectoryError):
                raise SourceChanged(path) from None
            except OSError as e:
                if e.errno == errno.ELOOP:  # replaced by a symlink
                    raise SourceChanged(path) from None
                raise
            try:
                st = fstat(src)
                mode, _, _, _, uid, gid, found, _, mtime, _ = st
                if found != size or mode & 0o170000 != statmod.S_IFREG:
                    raise SourceChanged(path)
                if (
                    len(name) <= 100
                    and name.isascii()
                    and size < _OCTAL_12
                    and 0 <= mtime < _OCTAL_12
                    and uid < _OCTAL_8
                    and gid < _OCTAL_8
                ):
                    head = name.encode().ljust(100, b"\x00") + numbers % (
                        mode & 0o7777,
                        uid,
                        gid,
                        size,
                        mtime,
                    )
                    buf += head
                    buf += b"%06o\x00 " % ((adler32(head) & 0xFFFF) - 1 + file_tail_sum)
                    buf += file_tail
                else:
                    buf += _member_header(m, st)
                if not size:
                    pass
                elif size <= SMALL:
                    data = read(src, size)
                    if len(data) != size:
                        if not data:
                            raise EOFError
                        buf += data
                        w.read_from(src, size - len(data))
                    else:
                        buf += data
                else:
                    take = w.copy_from if direct and size >= DIRECT_MIN else w.read_from
                    while progress is not None and left > PROGRESS_SLICE:
                        # a big file is reported slice by slice: its bytes move as they go in
                        take(src, PROGRESS_SLICE)
                        left -= PROGRESS_SLICE
                        progress(done_bytes + PROGRESS_SLICE, done_files)
                        done_bytes = done_files = 0
                    take(src, left)
            except EOFError:  # shrank while being read
                raise SourceChanged(path) from None
            finally:
                close(src)
            pad = -size % BLOCK
            if pad:
                buf += _ZEROS[:pad]
            done_bytes += left
            done_files += 1
            if progress is not None and (done_bytes >= 1 << 22 or done_files >= 1000):
                progress(done_bytes, done_files)
                done_bytes = done_files = 0
        else:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                raise SourceChanged(path) from None
            mtime = st[8]
            if len(name) <= 100 and not link and name.isascii() and 0 <= mtime < _OCTAL_12:
                head = name.encode().ljust(100, b"\x00") + numbers % (
                    st.st_mode & 0o7777,
                    st.st_uid,
                    st.st_gid,
                    0,
                    mtime,
                )
                if st.st_uid < _OCTAL_8 and st.st_gid < _OCTAL_8:
                    buf += head
                    buf += b"%06o\x00 " % (byte_sum(head) + tail_sums[kind])
                    buf += tails[kind]
                else:
                    buf += _member_header(m, st)
            else:
                buf += _member_header(m, st)
        if len(buf) >= cap:
            w.flush()
    if progress is not None and (done_bytes or done_files):
        progress(done_bytes, done_files)


def _part(members: Sequence[Member], first: int, end: int) -> Iterable[Member]:
    """Members ``first`` to ``end - 1``, from a list or a spool."""
    if isinstance(members, Spool):
        return members.iter_range(first, end)
    return members[first:end]


def _write_placed(
    fd: int, members: Sequence[Member], progress: Callable[[int, int], None] | None, size: int
) -> None:
    """An uncompressed archive, written by several processes when it is big
    enough: each writes a contiguous share of the members at its offset."""
    start = os.lseek(fd, 0, os.SEEK_CUR)
    shares = _shares(members, size)
    workers = _Workers(progress)
    try:
        if isinstance(members, Spool) and members._file is not None:
            members._file.flush()  # a forked writer must not write the parent's buffer
        for first, end, offset in shares[1:]:
            workers.start(fd, _part(members, first, end), start, offset, end == len(members))
        end = shares[0][1]
        _write_share(fd, _part(members, 0, end), start, 0, end == len(members), workers.report)
        workers.wait()
    finally:
        workers.stop()
    os.lseek(fd, start + size, os.SEEK_SET)


def _write_share(
    fd: int,
    members: Iterable[Member],
    start: int,
    offset: int,
    last: bool,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Write ``members`` at ``offset`` in the archive that begins at ``start``
    in ``fd``; the ``last`` share ends the archive."""
    w = _Writer(_PlacedSink(fd, start + offset))
    _write_members(w, members, progress)
    if last:
        body = w.sink.offset + len(w.buf) - start
        w.put(bytes(2 * BLOCK + (-(body + 2 * BLOCK) % RECORD)))
    w.flush()


def _shares(members: Sequence[Member], size: int) -> list[tuple[int, int, int]]:
    """How to split the writing of ``members`` among processes: (first, end,
    offset in the archive) of each share, about equal in work. A spooled list
    splits at its marks (every few thousand members), a short one anywhere."""
    work = size + MEMBER_COST * len(members)
    n = max(1, min(MAX_WORKERS, cpu_count(), work // PARALLEL_MIN))
    if n == 1:
        return [(0, len(members), 0)]
    if isinstance(members, MemberSpool) and members.spilled:
        points: Iterable[tuple[int, int]] = members.marks
    else:
        points = _offsets(members)
    shares = []
    first = first_offset = 0
    step = work // n
    target = step
    for i, offset in points:
        if offset + MEMBER_COST * i >= target and len(shares) < n - 1 and i > first:
            shares.append((first, i, first_offset))
            first, first_offset = i, offset
            target += step
    shares.append((first, len(members), first_offset))
    return shares


def _offsets(members: Iterable[Member]) -> Iterator[tuple[int, int]]:
    """(index, offset in the archive) of each member."""
    offset = 0
    for i, m in enumerate(members):
        yield i, offset
        offset += _span(m)


class _Workers:
    """Forked processes writing shares of an uncompressed archive. Each one
    reports its progress and its failure through a pipe; the parent passes
    the progress on and raises the failure."""

    def __init__(self, progress: Callable[[int, int], None] | None) -> None:
        self.progress = progress
        self.pipes: dict[int, tuple[int, bytearray]] = {}  # read end -> (pid, unread bytes)
        self.poller = select.poll()
        self.arm: Callable[[], None] | None = None

    def start(
        self, fd: int, members: Iterable[Member], start: int, offset: int, last: bool
    ) -> None:
        if self.arm is None:
            from wsrun.core.procs import death_signal

            self.arm = death_signal()
        r, w = os.pipe()
        try:
            pid = os.fork()
        except BaseException:
            os.close(r)
            os.close(w)
            raise
        if pid == 0:
            _worker(w, fd, members, start, offset, last, self.arm)  # does not return
        os.close(w)
        os.set_blocking(r, False)
        self.pipes[r] = (pid, bytearray())
        self.poller.register(r, select.POLLIN)

    def report(self, done_bytes: int, files: int) -> None:
        """Progress of the parent's own share; also looks for news from the others."""
        if self.progress is not None:
            self.progress(done_bytes, files)
        self.poll(0)

    def poll(self, timeout: float) -> None:
        """Take in what the processes sent within ``timeout`` seconds."""
        if not self.pipes:
            return
        for r, _ in self.poller.poll(timeout * 1000):
            pid, unread = self.pipes[r]
            try:
                data = os.read(r, 1 << 16)
            except BlockingIOError:
                continue
            if data:
                unread += data
                self._messages(unread)
                continue
            del self.pipes[r]
            self.poller.unregister(r)
            os.close(r)
            _, status = os.waitpid(pid, 0)
            self._messages(unread)
            if status != 0:
                raise StepError(f"a process writing the archive failed ({_exit_text(status)})")

    def _messages(self, unread: bytearray) -> None:
        """Act on the complete messages in ``unread`` and drop them."""
        while len(unread) >= 4:
            n = int.from_bytes(unread[:4], "little")
            if len(unread) < 4 + n:
                return
            message = marshal.loads(unread[4 : 4 + n])
            del unread[: 4 + n]
            if message[0] == "progress":
                if self.progress is not None:
                    self.progress(message[1], message[2])
            elif message[0] == "changed":
                raise SourceChanged(message[1])
            elif message[0] == "oserror":
                raise OSError(*message[1:])  # errno, strerror, filename
            else:
                raise RuntimeError(f"a process writing the archive failed: {message[1]}")

    def wait(self) -> None:
        """Wait for every process to finish; raises the first failure."""
        while self.pipes:
            self.poll(0.5)
            if self.progress is not None:
                self.progress(0, 0)  # lets the caller check its deadline

    def stop(self) -> None:
        """Kill and reap the processes still running (after a failure)."""
        if not self.pipes:
            return
        import signal  # only after a failure

        for r, (pid, _) in self.pipes.items():
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            os.close(r)
        self.pipes.clear()


def _exit_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _worker(
    pipe: int,
    fd: int,
    members: Iterable[Member],
    start: int,
    offset: int,
    last: bool,
    arm: Callable[[], None],
) -> NoReturn:
    """The body of a forked writer. It does only os-level work (the parent's
    other threads may hold locks) and never returns into the caller; it dies
    with the parent (``arm``: see wsrun.core.procs)."""
    code = 1
    try:
        arm()
        gc.disable()  # no finalizers of the parent's objects run here

        parent = os.getppid()

        def send(*message: Any) -> None:
            data = marshal.dumps(message)
            write_all(pipe, len(data).to_bytes(4, "little") + data)

        def progress(done_bytes: int, files: int) -> None:
            if os.getppid() != parent:  # orphaned: a rerun may be writing the file by now
                os._exit(1)
            send("progress", done_bytes, files)

        try:
            _write_share(fd, members, start, offset, last, progress)
            code = 0
        except SourceChanged as e:
            send("changed", e.path)
        except OSError as e:
            send("oserror", e.errno, e.strerror, e.filename)
        except BaseException as e:
            send("error", f"{type(e).__name__}: {e}")
    finally:
        os._exit(code)
