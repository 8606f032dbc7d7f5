"""Lossless JPEG 2000 masters of TIFFs, and a proof that does not trust the encoder.

A master keeps every sample of the TIFF at its full depth: 1- to 16-bit
grayscale, RGB, each with or without alpha, as JPEG 2000 components of the same
precision (the reversible 5/3 wavelet, no rate limit). What JPEG 2000 cannot
hold that way is refused before anything is written: CMYK (JP2 has no CMYK
colour space), floating-point or signed samples, more than 16 bits, several
pages, extra samples that are not alpha. Two conversions keep every pixel
exactly and are said so in the docs: a palette image becomes RGB (the palette's
colours; 8-bit when the TIFF's 16-bit palette holds 8-bit colours, else 16-bit),
and a min-is-white grayscale is inverted to the min-is-black JPEG 2000 knows.

Three decoders take part, so that no single one can hide a loss:

- tifffile (its own TIFF parser) decodes the TIFF that feeds the encoder
  (imagecodecs' OpenJPEG, in-process);
- libtiff (imagecodecs' ``tiff_decode``), with the tags read by Pillow's TIFF
  parser, decodes the TIFF again for the proof;
- the ``opj_decompress`` program (Debian's libopenjp2-tools: another build of
  OpenJPEG, in another process) decodes the master as written to disk.

The proof compares the last two: shape, bits per sample and every sample.

A proof costs about as much CPU as the encoding, so master plus proof can match
``opj_compress`` alone on one core only by wasting nothing on two
(docs/distillery.md, Speed; README, Benchmarks):

- each OpenJPEG job (an encoding, a proof's decoding) takes the cores no other
  job of this process holds (``sharing.cores``): alone it has them all, beside
  the next image's encoding it has one, so two jobs never fight over two cores;
- the decoder is started without forking this process (``setpriv`` arms its
  death signal): a fork would make every page of the encoder's memory
  copy-on-write, to be faulted in again;
- freed memory is kept while a loop makes masters (``sharing.keep_memory``), so
  the next image's buffers are not zeroed again by the kernel;
- the decoder writes PGX planes (one file per component), which it writes
  several times faster than raw planes, and the samples are compared and
  hashed in place, without copies.
"""

from __future__ import annotations

import functools
import hashlib
import mmap
import os
import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from wsrun.core.procs import death_signal
from wsrun.packs.distillery.sharing import cores

if TYPE_CHECKING:
    import numpy as np

#: The decoder of the proof; Debian and Ubuntu ship it in libopenjp2-tools.
OPJ_DECOMPRESS = "opj_decompress"
#: Changes when masters are made differently, so older ones are made again.
VERSION = 2


class NotLossless(Exception):
    """The TIFF cannot be kept losslessly in a JPEG 2000 master (the reason)."""


class Unreadable(NotLossless):
    """The TIFF's tags cannot be parsed at all."""


class ProofFailed(Exception):
    """The master written does not decode to the TIFF's samples (what differs)."""


@dataclass(frozen=True)
class Pixels:
    """Samples at full depth: ``samples`` is (height, width, components) of
    uint8 (up to 8 bits) or uint16, ``bits`` the precision of each sample and
    ``alpha`` the JPEG 2000 kind of the last component (0: colour, 1: opacity,
    2: premultiplied opacity)."""

    samples: np.ndarray
    bits: int
    alpha: int = 0

    def describe(self) -> str:
        """E.g. ``16-bit RGB 64x48``."""
        height, width, components = self.samples.shape
        kind = {1: "gray", 2: "gray+alpha", 3: "RGB", 4: "RGBA"}.get(
            components, f"{components}-component"
        )
        return f"{self.bits}-bit {kind} {width}x{height}"

    def checksum(self) -> str:
        """SHA-256 of the shape, depth and samples (16-bit ones little-endian)."""
        import numpy as np

        height, width, components = self.samples.shape
        digest = hashlib.sha256(f"{width}x{height}x{components} {self.bits}-bit\n".encode())
        samples = self.samples.astype("<u2" if self.bits > 8 else "u1", copy=False)
        digest.update(memoryview(np.ascontiguousarray(samples)).cast("B"))
        return digest.hexdigest()


@dataclass(frozen=True)
class _Layout:
    """What the TIFF's tags say about its first page (and how many pages it has)."""

    photometric: int
    bits: tuple[int, ...]
    sample_format: tuple[int, ...]
    samples: int
    extra: tuple[int, ...]
    planar: int
    colormap: tuple[int, ...] | None
    pages: int  # not counting reduced-resolution copies (thumbnails)


_PHOTOMETRIC = {
    4: "a transparency mask",
    6: "YCbCr",
    8: "CIE L*a*b*",
    9: "ICC L*a*b*",
    10: "ITU L*a*b*",
    32844: "LogL",
    32845: "LogLuv",
}


def _check(layout: _Layout) -> None:
    """Raise NotLossless when a master cannot keep this TIFF's samples exactly."""
    if layout.pages != 1:
        raise NotLossless(
            f"has {layout.pages} pages; a JPEG 2000 master holds one image (split the pages first)"
        )
    if layout.photometric == 5:
        raise NotLossless(
            "is CMYK: JP2 has no CMYK colour space (convert it to RGB with its ICC profile first)"
        )
    if layout.photometric not in (0, 1, 2, 3):
        kind = _PHOTOMETRIC.get(layout.photometric, f"photometric {layout.photometric}")
        raise NotLossless(f"is {kind}; only grayscale, RGB and palette images are kept")
    formats = set(layout.sample_format)
    if formats != {1}:
        names = {2: "signed integer", 3: "floating-point"}
        kind = " and ".join(names.get(f, f"sample format {f}") for f in sorted(formats - {1}))
        raise NotLossless(f"has {kind} samples; a master keeps unsigned integers")
    if len(set(layout.bits)) != 1:
        raise NotLossless(f"has samples of different sizes ({layout.bits})")
    bits = layout.bits[0]
    if not 1 <= bits <= 16:
        raise NotLossless(f"has {bits}-bit samples; a master keeps at most 16 bits")
    colour = 3 if layout.photometric == 2 else 1
    extra = layout.samples - colour
    if extra < 0:
        raise NotLossless(f"has {layout.samples} samples per pixel for {colour} colours")
    if extra > 1 or (
        extra == 1 and (layout.photometric == 3 or layout.extra[:1] not in [(1,), (2,)])
    ):
        raise NotLossless("has extra samples that are not one alpha channel")
    if layout.photometric == 3 and (layout.colormap is None or len(layout.colormap) != 3 << bits):
        raise NotLossless("is a palette image without a complete colour map")


def _normalize(data: np.ndarray, layout: _Layout) -> Pixels:
    """A decoder's samples as Pixels: (height, width, components), min-is-black,
    a palette replaced by its colours."""
    import numpy as np

    if data.ndim == 3 and layout.planar == 2 and layout.samples > 1:
        data = np.moveaxis(data, 0, -1)
    if data.ndim == 2:
        data = data[..., np.newaxis]
    if data.ndim != 3 or data.shape[2] != layout.samples:
        raise NotLossless(
            f"decodes to an array of shape {data.shape}, not {layout.samples} samples"
        )
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    if data.dtype.kind != "u" or data.dtype.itemsize > 2:
        raise NotLossless(f"decodes to {data.dtype} samples")
    data = data.astype(np.uint16 if data.dtype.itemsize == 2 else np.uint8, copy=False)
    bits = layout.bits[0]
    alpha = {1: 2, 2: 1}.get(layout.extra[0], 0) if layout.extra else 0
    if layout.photometric == 0:  # min-is-white: JPEG 2000 grayscale is min-is-black
        data = data.copy()
        data[..., 0] = (1 << bits) - 1 - data[..., 0]
    if layout.photometric == 3:
        colours = np.asarray(layout.colormap, dtype=np.uint16).reshape(3, 1 << bits)
        data = np.moveaxis(colours[:, data[..., 0]], 0, -1)
        bits = 16
        if not (colours % 257).any():  # 8-bit colours, as TIFF stores them (v * 257)
            data, bits = (data // 257).astype(np.uint8), 8
    return Pixels(np.ascontiguousarray(data), bits, alpha)


# ---- the TIFF decoded by tifffile: what the encoder gets ---------------------------


def _tifffile_layout(tif: Any) -> _Layout:
    page = tif.pages[0]
    pages = 1 + sum(1 for i in range(1, len(tif.pages)) if not tif.pages[i].is_reduced)
    samples = int(page.samplesperpixel)
    sample_format = page.sampleformat
    colormap = page.colormap
    return _Layout(
        photometric=int(page.photometric),
        bits=(int(page.bitspersample),) * samples,
        sample_format=(int(sample_format),) * samples,
        samples=samples,
        extra=tuple(int(e) for e in page.extrasamples),
        planar=int(page.planarconfig),
        colormap=None if colormap is None else tuple(int(v) for v in colormap.ravel()),
        pages=pages,
    )


def check(f: BinaryIO) -> None:
    """Raise NotLossless unless the TIFF open in ``f`` can become a lossless master
    (tags only: nothing is decoded)."""
    import tifffile

    try:
        with tifffile.TiffFile(f) as tif:
            layout = _tifffile_layout(tif)
    except Exception as e:  # tifffile raises many kinds for a file it cannot parse
        raise Unreadable(f"tifffile cannot read it: {e}") from None
    _check(layout)


def read_for_encoding(path: str) -> Pixels:
    """The TIFF's first page at full depth, decoded by tifffile."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            layout = _tifffile_layout(tif)
            _check(layout)
            data = tif.pages[0].asarray()
    except NotLossless:
        raise
    except Exception as e:
        raise NotLossless(f"tifffile cannot decode it: {e}") from None
    return _normalize(data, layout)


# ---- the TIFF decoded by libtiff, its tags read by Pillow: what the proof trusts ---


def _pillow_layout(f: BinaryIO) -> _Layout:
    """The tags of the first page and the number of full-size pages, read with
    Pillow's IFD parser alone (it decodes no pixels and needs no Pillow mode)."""
    from PIL import TiffImagePlugin

    head = f.read(8)
    if head[2:4] in (b"\x2b\x00", b"\x00\x2b"):  # BigTIFF
        head += f.read(8)
    ifd = TiffImagePlugin.ImageFileDirectory_v2(head)
    first: dict[int, Any] | None = None
    pages, seen = 0, set()
    while ifd.next and ifd.next not in seen:
        seen.add(ifd.next)
        f.seek(ifd.next)
        ifd = TiffImagePlugin.ImageFileDirectory_v2(head)
        ifd.load(f)
        if first is None:
            first = dict(ifd)
            pages = 1
        elif not int(ifd.get(254, 0)) & 1:  # NewSubfileType: reduced-resolution copy
            pages += 1
    if first is None:
        raise NotLossless("has no image directory")
    samples = int(first.get(277, 1))

    def per_sample(tag: int, default: int) -> tuple[int, ...]:
        value = first.get(tag, default)
        values = value if isinstance(value, tuple) else (value,)
        return tuple(int(v) for v in values) * (samples if len(values) == 1 else 1)

    colormap = first.get(320)
    extra = first.get(338, ())
    return _Layout(
        photometric=int(first.get(262, -1)),
        bits=per_sample(258, 1),
        sample_format=per_sample(339, 1),
        samples=samples,
        extra=tuple(int(e) for e in (extra if isinstance(extra, tuple) else (extra,))),
        planar=int(first.get(284, 1)),
        colormap=None if colormap is None else tuple(int(v) for v in colormap),
        pages=pages,
    )


def read_for_proof(path: str) -> Pixels:
    """The TIFF's first page at full depth, decoded by libtiff, independently of
    read_for_encoding."""
    import imagecodecs

    try:
        with open(path, "rb") as f:
            layout = _pillow_layout(f)
            _check(layout)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                data = imagecodecs.tiff_decode(mapped, index=0)  # no copy of the file
    except (NotLossless, OSError):
        raise
    except Exception as e:
        raise NotLossless(f"cannot decode it for the proof (Pillow's tags, libtiff): {e}") from None
    return _normalize(data, layout)


# ---- the master --------------------------------------------------------------------


def encode(pixels: Pixels) -> bytes:
    """A JP2 file holding ``pixels`` losslessly: reversible wavelet, no rate limit,
    one component per sample at the samples' precision, the reversible colour
    transform for RGB (as opj_compress and Kakadu do), a channel definition for
    alpha. OpenJPEG codes it on the cores free (``cores()``; the same bytes on any number)."""
    import imagecodecs

    samples = pixels.samples
    components = samples.shape[2]
    with cores() as n:
        jp2 = imagecodecs.jpeg2k_encode(
            samples if components > 1 else samples[..., 0],
            level=0,
            codecformat="jp2",
            reversible=True,
            bitspersample=pixels.bits,
            mct=components >= 3,
            numthreads=n,
        )
    if pixels.alpha:
        jp2 = _with_channel_definition(jp2, components, pixels.alpha)
    return jp2


def _with_channel_definition(jp2: bytes, components: int, alpha: int) -> bytes:
    """Add a ``cdef`` box to the JP2 header box: the last component is opacity
    (``alpha`` 1) or premultiplied opacity (2), the others are colours 1, 2, 3."""
    entries = [(i, 0, i + 1) for i in range(components - 1)] + [(components - 1, alpha, 0)]
    body = struct.pack(">H", len(entries)) + b"".join(struct.pack(">HHH", *e) for e in entries)
    cdef = struct.pack(">I4s", 8 + len(body), b"cdef") + body
    offset = 0
    while offset + 8 <= len(jp2):
        length, kind = struct.unpack(">I4s", jp2[offset : offset + 8])
        if kind == b"jp2h":
            header = struct.pack(">I4s", length + len(cdef), b"jp2h")
            end = offset + length
            return jp2[:offset] + header + jp2[offset + 8 : end] + cdef + jp2[end:]
        if length < 8:
            break
        offset += length
    raise ValueError("the encoder wrote no JP2 header box")


def decoder() -> str:
    """The path of ``opj_decompress``; NotLossless when it is missing (nothing can be proven)."""
    program = shutil.which(OPJ_DECOMPRESS)
    if program is None:
        raise NotLossless(
            f"{OPJ_DECOMPRESS} is not installed, so no master can be proven lossless "
            "(Debian and Ubuntu: apt-get install libopenjp2-tools)"
        )
    return program


#: The first line of a PGX plane as opj_decompress writes it: byte order (ML: big-endian),
#: sign, precision, width, height.
_PGX_HEADER = re.compile(rb"PG (ML|LM) ?([+-])? ?(\d+) (\d+) (\d+)\r?\n")


def _spawn_prefix() -> tuple[list[str], Any]:
    """How to start a decoder that dies with this thread: through ``setpriv
    --pdeathsig`` (util-linux 2.33 and later), so that Python starts it with vfork
    and this process's memory is not made copy-on-write by a fork; else with a
    ``preexec_fn`` that arms the signal after a fork (wsrun.core.procs), which
    also covers a run killed before the signal is armed."""
    setpriv = shutil.which("setpriv")
    if setpriv is not None and _knows_pdeathsig(setpriv):
        return [setpriv, "--pdeathsig", "KILL", "--"], None
    return [], death_signal()


@functools.cache
def _knows_pdeathsig(setpriv: str) -> bool:
    """Whether this ``setpriv`` has ``--pdeathsig`` (its help says so)."""
    try:
        done = subprocess.run([setpriv, "--help"], capture_output=True, text=True, check=False)
    except OSError:
        return False
    return done.returncode == 0 and "--pdeathsig" in done.stdout


def decode_master(path: str) -> Pixels:
    """The JPEG 2000 file at ``path`` decoded by ``opj_decompress`` on the cores
    free (``cores()``), to one PGX plane per component at the precision the
    codestream declares. The decoder dies with the run (``_spawn_prefix``)."""
    import numpy as np

    program = decoder()
    prefix, preexec = _spawn_prefix()
    with tempfile.TemporaryDirectory(prefix="wsrun-proof-") as tmp:
        link = os.path.join(tmp, "master.jp2")  # opj_decompress goes by the extension
        os.symlink(os.path.abspath(path), link)
        out = os.path.join(tmp, "pixels.pgx")  # it writes pixels_0.pgx, pixels_1.pgx, ...
        with cores() as n:
            # "-threads 1" would still hand every code-block to one worker thread
            threading_ = ["-threads", str(n)] if n > 1 else []
            done = subprocess.run(
                [*prefix, program, "-i", link, "-o", out, *threading_],
                capture_output=True,
                text=True,
                check=False,
                preexec_fn=preexec,
            )
        names = sorted(
            (n for n in os.listdir(tmp) if re.fullmatch(r"pixels_\d+\.pgx", n)),
            key=lambda n: int(n[7:-4]),
        )
        if done.returncode != 0 or not names:
            lines = (done.stderr + done.stdout).strip().splitlines() or ["no output"]
            raise ProofFailed(f"{OPJ_DECOMPRESS} cannot decode the master: {lines[-1]}")
        if names != [f"pixels_{i}.pgx" for i in range(len(names))]:
            raise ProofFailed(f"{OPJ_DECOMPRESS} wrote the planes {', '.join(names)}")
        planes = [_read_pgx(os.path.join(tmp, name)) for name in names]
    found = [(w, h, b, sign) for w, h, b, sign, _ in planes]
    if len(set(found)) != 1:
        sizes = ", ".join(f"{w}x{h} {b}-bit {sign}" for w, h, b, sign in found)
        raise ProofFailed(f"the master's components differ in size or depth: {sizes}")
    width, height, bits, sign = found[0]
    if sign != "unsigned":
        raise ProofFailed(f"the master decodes to {sign} samples")
    native = np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.uint32
    samples = np.empty((height, width, len(planes)), dtype=native)
    interleaved = samples.reshape(-1)  # a flat strided copy is several times faster
    for i, (*_, plane) in enumerate(planes):
        interleaved[i :: len(planes)] = plane  # straight from the mapped file
    return Pixels(samples, bits)


def _read_pgx(path: str) -> tuple[int, int, int, str, np.ndarray]:
    """Width, height, precision, sign and the samples of one PGX plane (a view of
    the file mapped into memory, unmapped with the last view of it)."""
    import numpy as np

    with open(path, "rb") as f:
        empty = os.fstat(f.fileno()).st_size == 0
        data: Any = b"" if empty else mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    head = _PGX_HEADER.match(data)
    if head is None:
        first = bytes(data[:40]).split(b"\n", 1)[0].decode("latin-1")
        raise ProofFailed(f"{OPJ_DECOMPRESS} wrote no PGX header but {first!r}")
    order, sign, bits, width, height = head.groups()
    bits_, width_, height_ = int(bits), int(width), int(height)
    signed = "signed" if sign == b"-" else "unsigned"
    size = 1 if bits_ <= 8 else 2 if bits_ <= 16 else 4
    endian = ">" if order == b"ML" else "<"
    body = len(data) - head.end()
    count, expected = body // size, width_ * height_
    if body != expected * size:
        raise ProofFailed(f"{OPJ_DECOMPRESS} wrote {count} samples, not {expected}")
    kind = f"{endian}{'i' if signed == 'signed' else 'u'}{size}"
    plane = np.frombuffer(data, dtype=kind, count=expected, offset=head.end())
    return width_, height_, bits_, signed, plane


def compare(source: Pixels, master: Pixels) -> None:
    """Raise ProofFailed unless ``master`` holds exactly the samples of ``source``."""
    import numpy as np

    if source.samples.shape != master.samples.shape or source.bits != master.bits:
        raise ProofFailed(
            f"the master decodes to {master.describe()}, the source is {source.describe()}"
        )
    a, b = source.samples, master.samples
    rows = max(1, (1 << 20) * len(a) // max(1, a.nbytes))  # about 1 MiB at a time, no copy
    if all(np.array_equal(a[y : y + rows], b[y : y + rows]) for y in range(0, len(a), rows)):
        return
    differ = a != b
    y, x, c = (int(i) for i in np.argwhere(differ)[0])
    raise ProofFailed(
        f"{int(differ.sum())} of {differ.size} samples differ (first at row {y}, "
        f"column {x}, component {c}: {a[y, x, c]} in the source, "
        f"{b[y, x, c]} in the master)"
    )
