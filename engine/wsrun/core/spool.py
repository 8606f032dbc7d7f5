"""Sequences too long to hold as Python objects: records spilled to a temporary file.

A step that copies a million files plans a million effects. Held as objects
(an Effect, its dict, its JSON line, the overlay's node) that is over 2 KB a
file; spooled it is a few bytes of memory a file at most. A ``Spool`` keeps its
first records in a list, as before, and past ``SPILL_AT`` writes them in
``marshal``-ed chunks to an anonymous temporary file (gone when closed or when
the process dies) which every iteration reads back a chunk at a time. Small
plans, the common case, never touch the disk and behave exactly as a list.

``SortedSpool`` sorts what is appended without holding it: sorted runs on
disk, merged as it is read (an external merge sort), for outputs such as
``files`` that promise sorted paths.

One piece: the spools and the lazy views over them (``Mapped``, ``Slice``,
the mappings) that ``is_lazy`` names, and which every consumer of an output
(journal, masking, runner, write-json) must know together.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import marshal
import os
import struct
import tempfile
from collections.abc import Callable, ItemsView, Iterable, Iterator, Mapping, Sequence
from typing import IO, Any, Generic, TypeVar, overload

T = TypeVar("T")
U = TypeVar("U")
V = TypeVar("V")

#: Records kept in memory before a spool spills to disk.
SPILL_AT = 20_000
#: Records per chunk on disk (and read back at a time).
CHUNK = 4096

_LEN = struct.Struct("<Q")


class Spool(Sequence[T], Generic[T]):
    """An append-only sequence of ``marshal``-able records (tuples of str, int,
    None, dicts of those): a list while short, a temporary file once long."""

    def __init__(self, items: Iterable[T] = ()) -> None:
        self._head: list[T] = []  # in memory: everything, until the first spill
        self._file: IO[bytes] | None = None
        self._chunks = 0
        self._spilled = 0  # records on disk
        self._end = 0  # the file's size
        #: Index of the first record of each chunk on disk, and the chunk's offset.
        self._starts: list[int] = []
        self._offsets: list[int] = []
        for item in items:
            self.append(item)

    # -- writing --------------------------------------------------------------

    def _encode(self, item: T) -> Any:
        return item

    def _decode(self, record: Any) -> T:
        return record  # type: ignore[no-any-return]

    def append(self, item: T) -> None:
        """Add one record at the end."""
        self._head.append(item)
        if len(self._head) >= (CHUNK if self._file is not None else SPILL_AT):
            self._spill()

    def extend(self, items: Iterable[T]) -> None:
        for item in items:
            self.append(item)

    def _spill(self) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="wsrun-spool-")  # noqa: SIM115
        self._file.seek(0, os.SEEK_END)
        head, encode = self._head, self._encode
        plain = type(self)._encode is Spool._encode
        for start in range(0, len(head), CHUNK):
            part = head[start : start + CHUNK]
            data = marshal.dumps(part if plain else [encode(x) for x in part])
            self._file.write(_LEN.pack(len(data)))
            self._file.write(data)
            self._chunk_written(self._end, head[start])
            self._starts.append(self._spilled + start)
            self._offsets.append(self._end)
            self._end += _LEN.size + len(data)
            self._chunks += 1
        self._spilled += len(head)
        self._head = []

    def _chunk_written(self, offset: int, first: T) -> None:
        """Called for each chunk written, at its offset, with its first record."""

    def _chunk(self, offset: int) -> list[Any]:
        """The raw records of the chunk written at ``offset``."""
        assert self._file is not None
        self._file.flush()
        fd = self._file.fileno()
        (size,) = _LEN.unpack(os.pread(fd, _LEN.size, offset))
        return marshal.loads(os.pread(fd, size, offset + _LEN.size))  # type: ignore[no-any-return]

    @property
    def spilled(self) -> bool:
        """True once records live on disk (tests use it to see the bound hold)."""
        return self._file is not None

    def close(self) -> None:
        """Drop the temporary file (also done when the spool is collected)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._head = []
        self._spilled = self._chunks = self._end = 0
        self._starts, self._offsets = [], []

    # -- reading --------------------------------------------------------------

    def __len__(self) -> int:
        return self._spilled + len(self._head)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __iter__(self) -> Iterator[T]:
        return itertools.chain.from_iterable(self._lists(0, None))

    def iter_range(self, start: int, stop: int) -> Iterator[T]:
        """Records ``start`` to ``stop - 1``, reading only the chunks that hold
        them (a forked writer takes its share of a spooled list this way)."""
        return itertools.chain.from_iterable(self._lists(start, stop))

    def iter_as(self, on_disk: Callable[[Any], U], in_memory: Callable[[T], U]) -> Iterator[U]:
        """Every record as ``on_disk`` makes it of a record read back (its
        ``_encode``-d form) or ``in_memory`` of an item not spilled yet: a view
        of a million records (effects as dicts) made without first decoding
        each into an item."""
        return itertools.chain.from_iterable(self._lists(0, None, on_disk, in_memory))

    def _lists(
        self,
        start: int,
        stop: int | None,
        decode: Callable[[Any], Any] | None = None,
        in_memory: Callable[[T], Any] | None = None,
    ) -> Iterator[list[Any]]:
        """The records from ``start`` to ``stop`` (None: the end, as it is when
        reached), a chunk's list at a time: iterated in C, not by a generator
        per record. Records read back go through ``decode`` (default:
        ``_decode``), those still in memory through ``in_memory`` (default: none)."""
        at = start
        if self._file is not None and at < self._spilled:
            plain = decode is None and type(self)._decode is Spool._decode
            decode = decode or self._decode
            chunk = bisect.bisect_right(self._starts, at) - 1
            end = self._spilled if stop is None else min(stop, self._spilled)
            while at < end:
                first = self._starts[chunk]
                records = self._chunk(self._offsets[chunk])
                last = first + len(records)
                if at > first or last > end:
                    records = records[at - first : end - first]
                yield records if plain else [decode(r) for r in records]
                at = min(last, end)
                chunk += 1
        if stop is None:
            head = self._head[at - self._spilled :]  # a copy: later appends are not seen
        elif at < stop:
            head = self._head[at - self._spilled : stop - self._spilled]
        else:
            return
        yield head if in_memory is None else list(map(in_memory, head))

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> list[T]: ...

    def __getitem__(self, index: int | slice) -> T | list[T]:
        """Records by position: read through from the start (a spool is for
        streaming; this is for the odd look at the first few)."""
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            wanted = range(start, stop, step)
            if step > 0:
                out = []
                for i, item in enumerate(self):
                    if i >= stop:
                        break
                    if i in wanted:
                        out.append(item)
                return out
            return list(self)[index]
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError("spool index out of range")
        if index >= self._spilled:
            return self._head[index - self._spilled]
        for i, item in enumerate(self):
            if i == index:
                return item
        raise IndexError("spool index out of range")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (Sequence, Spool)) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {len(self)}{' (on disk)' if self.spilled else ''}>"

    def __reduce__(self) -> Any:  # pickled (multiprocessing) as the list it stands for
        return (list, (list(self),))


class SortedSpool(Spool[T]):
    """Appended in any order, read back sorted: runs of ``SPILL_AT`` records are
    sorted and spooled, and merged lazily on each iteration (or, when the
    records came in order, as is usual for a sorted walk, read one after
    the other)."""

    def __init__(self, items: Iterable[T] = ()) -> None:
        self._runs: list[Spool[T]] = []
        self._ordered = True  # every record appended so far was >= the one before
        self._last: Any = None
        super().__init__(items)

    def append(self, item: T) -> None:
        if self._ordered:
            if self._last is not None and item < self._last:  # type: ignore[operator]
                self._ordered = False
            else:
                self._last = item
        self._head.append(item)
        if len(self._head) >= SPILL_AT:
            self._head.sort()  # type: ignore[call-arg]
            run: Spool[T] = Spool()
            run._head = self._head
            run._spill()
            self._runs.append(run)
            self._head = []

    @property
    def spilled(self) -> bool:
        return bool(self._runs)

    def __len__(self) -> int:
        return sum(len(r) for r in self._runs) + len(self._head)

    def __iter__(self) -> Iterator[T]:
        self._head.sort()  # type: ignore[call-arg]
        if not self._runs:
            return iter(self._head)
        if self._ordered:
            return itertools.chain(*self._runs, self._head)
        return heapq.merge(*self._runs, self._head)  # type: ignore[type-var]

    def __getitem__(self, index: Any) -> Any:
        if not self._runs:
            self._head.sort()  # type: ignore[call-arg]
            return self._head[index]
        if isinstance(index, slice):
            return list(self)[index]
        return next(itertools.islice(iter(self), _position(index, len(self)), None))

    def close(self) -> None:
        for run in self._runs:
            run.close()
        self._runs = []
        self._head = []


class LazySequence(Sequence[T], Generic[T]):
    """What the lazy sequences below share: equal to the list they stand for,
    pickled (multiprocessing) as that list."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {len(self)}>"

    def __reduce__(self) -> Any:
        return (list, (list(self),))


class Mapped(LazySequence[U], Generic[T, U]):
    """A lazy view of a sequence with ``fn`` applied to each item as it is read:
    effects as dicts, masked, without a second million objects."""

    def __init__(self, base: Sequence[T], fn: Callable[[T], U]) -> None:
        self.base = base
        self.fn = fn

    def __len__(self) -> int:
        return len(self.base)

    def __iter__(self) -> Iterator[U]:
        return map(self.fn, self.base)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self.fn(x) for x in self.base[index]]
        return self.fn(self.base[index])


class PairsDict(Mapping[str, Any]):
    """A mapping given as a (lazy) sequence of unique (key, value) pairs, kept
    in that order: tar's members of a million files, a directory product's
    {name: digest key}. For iteration and serialisation; a lookup reads
    through the pairs."""

    def __init__(self, pairs: Sequence[tuple[str, Any]]) -> None:
        self.pairs = pairs

    def __getitem__(self, key: str) -> Any:
        for k, v in self.pairs:
            if k == key:
                return v
        raise KeyError(key)

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self.pairs)

    def items(self) -> ItemsView[str, Any]:
        return _PairItems(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return len(self) == len(other) and all(k in other and other[k] == v for k, v in self.pairs)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<PairsDict of {len(self)}>"

    def __reduce__(self) -> Any:
        return (dict, (list(self.pairs),))


class _PairItems(ItemsView[str, Any]):
    _mapping: PairsDict

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(self._mapping.pairs)


class SpooledDict(PairsDict, Generic[V]):
    """A read-only mapping too big to hold (copy's ``checksums`` of a million
    files): its items sorted by key in a spool on disk, with the first key of
    each chunk in memory, so a lookup reads one chunk and iteration streams."""

    def __init__(self, pairs: Iterable[tuple[str, V]]) -> None:
        """``pairs`` sorted by key, keys unique."""
        self._firsts: list[str] = []
        self._offsets: list[int] = []
        self._cached_at = -1
        self._cached: tuple[list[Any], list[str]] = ([], [])
        spool: Spool[tuple[str, V]] = Spool()
        spool._chunk_written = self._index  # type: ignore[method-assign]
        for pair in pairs:
            spool._head.append(pair)
            if len(spool._head) >= CHUNK:
                spool._spill()
        if spool._head:
            spool._spill()
        self._spool = spool
        super().__init__(spool)

    def _index(self, offset: int, first: tuple[str, V]) -> None:
        self._firsts.append(first[0])
        self._offsets.append(offset)

    def __getitem__(self, key: str) -> V:
        at = bisect.bisect_right(self._firsts, key) - 1
        if at >= 0:
            # Lookups in a row mostly fall in one chunk (a delivery's files in
            # walk order): the last chunk read is kept, and its keys.
            if at == self._cached_at:
                chunk, keys = self._cached
            else:
                chunk = self._spool._chunk(self._offsets[at])
                keys = [pair[0] for pair in chunk]
                self._cached_at, self._cached = at, (chunk, keys)
            i = bisect.bisect_left(keys, key)
            if i < len(chunk) and chunk[i][0] == key:
                return chunk[i][1]  # type: ignore[no-any-return]
        raise KeyError(key)

    def __repr__(self) -> str:
        return f"<SpooledDict of {len(self)}>"


class MappedDict(PairsDict):
    """A spooled mapping shown through ``fn`` on each (key, value) as it is read
    (masked for the journal); for iteration and serialisation, not lookups."""

    def __init__(self, base: Mapping[str, Any], fn: Callable[[Any], Any]) -> None:
        self.base = base
        self.fn = fn
        super().__init__(_Shown(base, fn))


class _Shown(LazySequence[tuple[Any, Any]]):
    """The items of ``base`` through ``fn``, made as they are read."""

    def __init__(self, base: Mapping[str, Any], fn: Callable[[Any], Any]) -> None:
        self.base, self.fn = base, fn

    def __len__(self) -> int:
        return len(self.base)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        fn = self.fn
        return ((fn(k), fn(v)) for k, v in self.base.items())

    def __getitem__(self, index: Any) -> Any:
        return list(self)[index]


class Slice(LazySequence[T]):
    """Records ``start`` to ``stop - 1`` of a spool, read as they are needed
    (one product's files among a delivery's)."""

    def __init__(self, base: Spool[T], start: int, stop: int) -> None:
        self.base, self.start, self.stop = base, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[T]:
        return self.base.iter_range(self.start, self.stop)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return list(self)[index]
        at = self.start + _position(index, len(self))
        return next(self.base.iter_range(at, at + 1))


class Chain(LazySequence[T]):
    """Sequences one after the other, read in turn (an atomic group's effects:
    its steps', some spooled), without copying them into one list."""

    def __init__(self, parts: Iterable[Sequence[T]] = ()) -> None:
        self.parts: list[Sequence[T]] = [p for p in parts if len(p)]

    def add(self, part: Sequence[T]) -> None:
        if len(part):
            self.parts.append(part)

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __iter__(self) -> Iterator[T]:
        return itertools.chain.from_iterable(self.parts)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice) or index < 0:
            return list(self)[index]
        for part in self.parts:
            if index < len(part):
                return part[index]
            index -= len(part)
        raise IndexError("chain index out of range")


class RenamedDict(MappedDict):
    """A lazy mapping shown with its keys and values through ``show`` (a
    group's staged paths as their final ones), looked up by the key ``find``
    gives back: one chunk read a lookup, as on the mapping itself."""

    def __init__(
        self, base: Mapping[str, Any], show: Callable[[Any], Any], find: Callable[[str], str]
    ) -> None:
        super().__init__(base, show)
        self.find = find

    def __getitem__(self, key: str) -> Any:
        try:
            return self.fn(self.base[self.find(key)])
        except KeyError:
            return self.fn(self.base[key])


def _position(index: int, n: int) -> int:
    """``index`` (negative: from the end) as a position in ``n`` records."""
    if index < 0:
        index += n
    if not 0 <= index < n:
        raise IndexError("spool index out of range")
    return index


def is_lazy(value: Any) -> bool:
    """True for the sequences and mappings of this module (callers that need a
    real list or dict, JSON encoders, jsonschema, make one or stream it)."""
    return isinstance(
        value, (Spool, Mapped, Slice, Chain, SpooledDict, MappedDict, PairsDict, RenamedDict)
    )


#: Values that hold nothing: most of a long mapping's, skipped without a call.
_SCALARS = frozenset({str, int, float, bool, type(None)})


def holds_lazy(value: Any) -> bool:
    """True for a lazy value, or a plain dict or list with one inside (a
    delivery.json document whose file lists are spooled)."""
    if type(value) in _SCALARS:
        return False
    if is_lazy(value):
        return True
    if isinstance(value, dict):
        value = value.values()
    elif not isinstance(value, list):
        return False
    return any(holds_lazy(v) for v in value if type(v) not in _SCALARS)


def sample(value: Any, n: int = 1000) -> Any:
    """The first ``n`` items of a lazy sequence or mapping, as a list or dict
    (schema checks of a spooled output look at these)."""
    if lazy_mapping(value):
        return dict(itertools.islice(value.items(), n))
    return list(itertools.islice(value, n))


def lazy_mapping(value: Any) -> bool:
    """True for this module's mappings."""
    return isinstance(value, (SpooledDict, MappedDict, PairsDict, RenamedDict))
