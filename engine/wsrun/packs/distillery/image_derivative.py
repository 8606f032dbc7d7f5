"""The ``image-derivative`` step type: JPEG 2000 and JPEG files made from a TIFF.

One piece: the lossless master, the lossy derivatives and the encoding ahead for the
next image share the decoded source and its identity check; the proof is ``lossless``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wsrun.core import fileio, hashing
from wsrun.core.effects import Effect, create_dir, create_file
from wsrun.core.fs import ContentUnknown
from wsrun.core.step import Plan, Result, StepContext, StepError
from wsrun.packs.distillery import lossless, sharing, xmp

if TYPE_CHECKING:
    from PIL.Image import Image

NAME = "image-derivative"
DOC = """Make JPEG 2000 and JPEG derivatives of a TIFF, with a proof that lossless ones are lossless.

An archive keeps a lossless JPEG 2000 master (about half the size of the TIFF)
and gives readers lossy JPEG 2000, JPEG and thumbnail copies. Each entry of
``derivatives`` is one file; its format comes from ``format`` or the name's
extension (.jp2, .jpg/.jpeg).

A ``lossless`` JPEG 2000 master keeps every sample at the TIFF's full depth
(1- to 16-bit grayscale or RGB, with or without alpha; a palette image becomes
RGB with the palette's exact colours, a min-is-white one is inverted to
min-is-black). It is proven after writing, independently of the encoder: the
TIFF is decoded again by libtiff (the encoder was fed by tifffile) and the
master by ``opj_decompress`` (Debian's libopenjp2-tools, required), and shape,
bits per sample and every sample must be equal; the ``proofs`` output holds
the SHA-256 of both decodings. When they differ the step fails and the file is
not left behind. A TIFF that a master cannot keep exactly (CMYK, floating-point
or signed samples, more than 16 bits, several pages, extra samples that are not
alpha) is refused before anything is written. Access copies take a compression
``ratio`` (JPEG 2000) or ``quality`` (JPEG) and ``max_size`` (the longest side,
for thumbnails and screen copies); they are made from the image as Pillow reads
it, so 16-bit RGB is scaled to 8 bits, as is any 16-bit image for JPEG.

``metadata`` (title, identifier, source, publisher, rights) is embedded in every
derivative as Dublin Core in an XMP packet: the APP1 XMP segment of a JPEG, a
``uuid`` box with the XMP UUID in a JP2 (exiftool, ``exiftool -xmp:all FILE``,
and Adobe tools read both). The packet also records how the file was derived
(source size and mtime, the derivative's settings, the metadata) and its proof,
so a second run finds the file up to date without decoding it and reports
``ok``. Files are written under a temporary name and renamed when complete.
imagecodecs (OpenJPEG) encodes masters, Pillow (OpenJPEG, libjpeg) access copies.
A master's encoder and its proof's decoder share the cores the run may use (each
takes those the other leaves; the bytes do not depend on it), and the TIFF is
decoded for the proof while the master is encoded.
"""

_DERIVATIVE: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["to"],
    "properties": {
        "to": {
            "description": "The file to write; missing parent directories are created.",
            "type": "string",
            "minLength": 1,
        },
        "format": {
            "description": "jp2 or jpeg; by default from the extension of `to`.",
            "enum": ["jp2", "jpeg"],
        },
        "lossless": {
            "description": "A reversible JPEG 2000, proven lossless by decoding it again "
            "(jp2 only; default false).",
            "type": "boolean",
        },
        "ratio": {
            "description": "JPEG 2000 compression ratio (e.g. 20 for 1/20 of the raw size); "
            "not with `lossless`.",
            "type": "number",
            "exclusiveMinimum": 1,
        },
        "quality": {
            "description": "JPEG quality, 1-95 (default 85).",
            "type": "integer",
            "minimum": 1,
            "maximum": 95,
        },
        "max_size": {
            "description": "Scale down (never up) so that the longer side is at most this many "
            "pixels, keeping the aspect ratio: thumbnails and screen copies.",
            "type": "integer",
            "minimum": 1,
        },
    },
}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["source", "derivatives"],
    "properties": {
        "source": {
            "description": "The TIFF to derive from (its first page).",
            "type": "string",
            "minLength": 1,
            "examples": ["incoming/MS01_001/MS01_001_0001.tif"],
        },
        "derivatives": {
            "description": "The files to make from it, each {to, format, lossless, ratio, "
            "quality, max_size}.",
            "type": "array",
            "minItems": 1,
            "items": _DERIVATIVE,
            "examples": [
                [
                    {"to": "preservation/0001.jp2", "lossless": True},
                    {"to": "access/0001.jp2", "ratio": 20},
                    {"to": "access/0001.jpg", "quality": 85, "max_size": 2000},
                    {"to": "access/0001-thumb.jpg", "max_size": 200},
                ]
            ],
        },
        "metadata": {
            "description": "Descriptive metadata embedded in every derivative (XMP Dublin Core).",
            "type": "object",
            "additionalProperties": False,
            "properties": {
                name: {"type": "string", "description": f"dc:{name}"} for name in xmp.DC_FIELDS
            },
            "examples": [
                {
                    "title": "Letter to R. Millikan, 1921",
                    "identifier": "MS01_001_0001",
                    "source": "Caltech Archives, MS01 box 1 folder 1",
                    "publisher": "Caltech Archives and Special Collections",
                    "rights": "Copyright Caltech",
                }
            ],
        },
    },
}

EXAMPLES = [
    """- id: master
  uses: image-derivative
  with:
    source: "{{ item }}"
    derivatives:
      - {to: "preservation/{{ item | basename | replace('.tif', '.jp2') }}", lossless: true}
    metadata:
      title: "{{ steps.aspace.outputs.archival_objects[0].title }}"
      identifier: "{{ item | basename }}"
      publisher: Caltech Archives and Special Collections
""",
    """- id: access
  uses: image-derivative
  with:
    source: scans/0001.tif
    derivatives:
      - {to: access/0001.jp2, ratio: 20}
      - {to: access/0001.jpg, quality: 85, max_size: 2000}
      - {to: access/0001-thumb.jpg, max_size: 200}
""",
]

OUTPUTS = {
    "source": "absolute path of the TIFF",
    "width": "its width in pixels (null when a dry run cannot read it yet)",
    "height": "its height in pixels",
    "mode": "its Pillow pixel mode (RGB, L, I;16, ...; 16-bit RGB reads as RGB: a master's "
    "proof gives its true depth)",
    "derivatives": "one {path, format, lossless, width, height, bytes} per derivative; bytes is "
    "null in a dry run of a file still to write",
    "proofs": "one {path, source_pixels, derivative_pixels, depth, lossless} per lossless "
    "derivative: SHA-256 of the TIFF's and of the master's samples as decoded for the proof, "
    "and what they are (e.g. `16-bit RGB 6000x4000`); null in a dry run",
    "metadata": "the metadata embedded",
}

_EXTENSIONS = {".jp2": "jp2", ".jpg": "jpeg", ".jpeg": "jpeg"}


@dataclass
class _Target:
    path: str
    format: str
    lossless: bool
    ratio: float | None
    quality: int
    size: tuple[int, int] | None  # pixels after scaling; None when the source is unreadable
    max_size: int | None
    derivation: str  # fingerprint embedded in the file


@dataclass
class _Data:
    source: str
    targets: list[_Target]  # the ones to write
    parents: list[str]
    metadata: dict[str, str]


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    source = ctx.path(params["source"])
    info = ctx.fs.stat(source)
    if info is None or not info.is_file:
        raise StepError("source image does not exist", path=source)
    metadata = {k: v for k, v in params.get("metadata", {}).items() if v}
    width = height = mode = None
    try:
        width, height, mode = _header(ctx, source)
    except ContentUnknown:
        pass  # a dry run of a file an earlier step would write
    except StepError:
        if any(spec.get("lossless") for spec in params["derivatives"]):
            _refuse_unkeepable(ctx, source)  # a TIFF Pillow cannot read: the reason says more
        raise

    targets, seen = [], set()
    for spec in params["derivatives"]:
        target = _target(spec, ctx, source, info, width, height, mode, metadata)
        if target.path in seen or target.path == source:
            raise StepError("two derivatives (or the source) share this path", path=target.path)
        seen.add(target.path)
        targets.append(target)

    effects: list[Effect] = []
    parents: list[str] = []
    derivatives, proofs, stale = [], [], []
    for t in targets:
        current = _current(ctx, t)
        derivatives.append(
            {
                "path": t.path,
                "format": t.format,
                "lossless": t.lossless,
                "width": t.size[0] if t.size else None,
                "height": t.size[1] if t.size else None,
                "bytes": current["bytes"] if current else None,
            }
        )
        if t.lossless:
            proofs.append(_proof(t.path, current))
        if current is not None:
            continue
        stale.append(t)
        for parent in _missing_parents(ctx, os.path.dirname(t.path)):
            if parent not in parents:
                parents.append(parent)
                effects.append(create_dir(parent))
        effects.append(create_file(t.path, bytes=None, derived_from=source, format=t.format))
    if any(t.lossless for t in stale):
        _check_lossless(ctx, source, readable=width is not None)
    outputs = {
        "source": source,
        "width": width,
        "height": height,
        "mode": mode,
        "derivatives": derivatives,
        "proofs": proofs,
        "metadata": metadata,
    }
    data = _Data(source, stale, parents, metadata)
    return Plan(effects=effects, outputs=outputs, data=data)


def apply(plan: Plan, ctx: StepContext) -> Result:
    d: _Data = plan.data
    if not d.targets:
        return Result(outputs=plan.outputs)
    if not any(t.lossless for t in d.targets):
        return _apply(plan, ctx)
    try:
        result = _apply(plan, ctx)
    except BaseException:
        sharing.release_memory()  # the loop stops here
        raise
    with _ahead_lock:
        last = not _ahead  # no encoding ahead waits for its apply
    if last:
        sharing.release_memory()
    return result


def _apply(plan: Plan, ctx: StepContext) -> Result:
    d: _Data = plan.data
    image = None
    if any(not t.lossless for t in d.targets):
        image = _pillow_image(d.source)
    master = _encode_master(d.source) if any(t.lossless for t in d.targets) else None
    for parent in d.parents:
        os.makedirs(parent, exist_ok=True)
    written: dict[str, dict[str, Any]] = {}
    # Work is counted in derivatives and in the source bytes each one is made from.
    size = os.path.getsize(d.source)
    task = ctx.progress.task(
        "image-derivative", total_bytes=size * len(d.targets), total_files=len(d.targets)
    )
    try:
        for t in d.targets:
            ctx.check_deadline()
            if t.lossless:
                assert master is not None
                written[t.path] = _write_master(master, t, d.metadata)
            else:
                assert image is not None
                written[t.path] = _write(image, t, d.metadata)
            task.advance(bytes=size, files=1)
    finally:
        task.close()
    outputs = dict(plan.outputs)
    outputs["derivatives"] = [
        {**item, "bytes": written[item["path"]]["bytes"]} if item["path"] in written else item
        for item in plan.outputs["derivatives"]
    ]
    outputs["proofs"] = [
        _proof(p["path"], written[p["path"]]) if p["path"] in written else p
        for p in plan.outputs["proofs"]
    ]
    return Result(effects=[_as_written(e, written) for e in plan.effects], outputs=outputs)


def _as_written(effect: Effect, written: dict[str, dict[str, Any]]) -> Effect:
    """A planned file's effect with the size and sha256 of what was written.
    The plan cannot know them (the encoder decides) and leaves them out; every
    other field stays as planned (tests/test_fidelity.py)."""
    done = written.get(effect.path) if effect.op == "create_file" else None
    if done is None:
        return effect
    return dataclasses.replace(
        effect, bytes=done["bytes"], extra={**effect.extra, "sha256": done["sha256"]}
    )


def _pillow_image(source: str) -> Image:
    """The TIFF's first page as Pillow decodes it, for the access copies."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as opened:
            image = opened.copy()  # decodes the first page
    except (UnidentifiedImageError, OSError) as e:
        raise StepError(f"cannot read the image: {e}", path=source) from None
    return native_order(image)


def native_order(image: Image) -> Image:
    """A 16-bit image in the byte order Pillow and OpenJPEG exchange (``I;16``):
    big-endian TIFFs (``I;16B``, Motorola order, common from Macs) would
    otherwise be written byte-swapped."""
    from PIL import Image as PILImage

    if image.mode in ("I;16B", "I;16L"):
        return PILImage.frombytes("I;16", image.size, image.tobytes(), "raw", image.mode)
    return image


def _header(ctx: StepContext, source: str) -> tuple[int, int, str]:
    """Width, height and mode, read from the TIFF's header only. Pillow's TIFF
    plugin is imported first: a file without a name would otherwise make Pillow
    import every one of its plugins (some 60 modules) to find it."""
    from PIL import (
        Image,
        TiffImagePlugin,  # noqa: F401 (registers TIFF, which Image.open tries first)
        UnidentifiedImageError,
    )

    with ctx.fs.open(source) as f:
        try:
            with Image.open(f) as image:
                if image.format != "TIFF":
                    raise StepError(f"is {image.format}, not a TIFF", path=source)
                return image.size[0], image.size[1], image.mode
        except UnidentifiedImageError:
            raise StepError("is not an image Pillow can read", path=source) from None


def _target(
    spec: dict[str, Any],
    ctx: StepContext,
    source: str,
    info: Any,
    width: int | None,
    height: int | None,
    mode: str | None,
    metadata: dict[str, str],
) -> _Target:
    path = ctx.path(spec["to"])
    fmt = spec.get("format") or _EXTENSIONS.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise StepError("name a format (jp2 or jpeg) or use .jp2/.jpg", path=path)
    exact = bool(spec.get("lossless", False))
    if exact and fmt != "jp2":
        raise StepError("only a JPEG 2000 derivative can be lossless", path=path)
    if exact and spec.get("max_size"):
        raise StepError("a lossless derivative cannot be scaled (max_size)", path=path)
    if exact and spec.get("ratio"):
        raise StepError("a lossless derivative cannot have a ratio (it would be lossy)", path=path)
    if fmt == "jpeg" and mode is not None and mode not in _JPEG_MODES:
        raise StepError(f"cannot make a JPEG from a {mode} image", path=source)
    if fmt == "jp2" and not exact and mode is not None and mode not in _JP2_MODES:
        raise StepError(f"cannot make a JPEG 2000 from a {mode} image", path=source)
    size = None if width is None or height is None else _scaled(width, height, spec.get("max_size"))
    settings = {
        "format": fmt,
        "lossless": exact,
        "ratio": spec.get("ratio"),
        "quality": spec.get("quality", 85) if fmt == "jpeg" else None,
        "max_size": spec.get("max_size"),
    }
    if exact:  # masters made by an older way are made again
        settings["proof"] = lossless.VERSION
    derivation = json.dumps(
        {"source": [info.size, info.mtime_ns], "settings": settings, "metadata": metadata},
        sort_keys=True,
        separators=(",", ":"),
    )
    return _Target(
        path,
        fmt,
        exact,
        settings["ratio"],
        settings["quality"] or 85,
        size,
        settings["max_size"],
        hashlib.sha256(derivation.encode()).hexdigest(),
    )


_RGB = {"RGB", "RGBA"}
#: Pixel modes each format takes (JPEG ones after 16-bit scaling).
_JP2_MODES = {"L", "LA", "RGB", "RGBA", "I;16", "I;16B", "I;16L"}
_JPEG_MODES = {"L", "RGB", "I;16", "I;16B", "I;16L", "I", "LA", "RGBA", "P", "1", "CMYK"}


def _check_lossless(ctx: StepContext, source: str, readable: bool) -> None:
    """Refuse, before anything is written, a TIFF no master can keep exactly (its
    tags say so), and any master when the proof's decoder is missing."""
    try:
        lossless.decoder()
        if readable:
            with ctx.fs.open(source) as f:
                lossless.check(f)
    except lossless.NotLossless as e:
        raise StepError(
            f"cannot make a lossless master: {e}; nothing written", path=source
        ) from None


def _refuse_unkeepable(ctx: StepContext, source: str) -> None:
    """Raise the refusal when the TIFF's tags say no master can keep it."""
    try:
        with ctx.fs.open(source) as f:
            lossless.check(f)
    except lossless.Unreadable:
        return  # not a TIFF at all: Pillow's error says so
    except lossless.NotLossless as e:
        raise StepError(
            f"cannot make a lossless master: {e}; nothing written", path=source
        ) from None


def _scaled(width: int, height: int, max_size: int | None) -> tuple[int, int]:
    if not max_size or max(width, height) <= max_size:
        return width, height
    scale = max_size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _current(ctx: StepContext, t: _Target) -> dict[str, Any] | None:
    """What an up-to-date file at the target holds ({bytes, sourcePixels, ...}),
    or None when it must be (re)written."""
    info = ctx.fs.stat(t.path)
    if info is None:
        return None
    if not info.is_file:
        raise StepError("exists and is not a file", path=t.path)
    if info.content_from is None:
        return None  # an earlier step of this dry run would write it
    try:
        packet = xmp.read_xmp(info.content_from)
    except OSError:
        return None
    fields = xmp.parse_xmp(packet) if packet else {}
    if fields.get("derivation") != t.derivation:
        return None
    return {"bytes": info.size, **fields}


def _proof(path: str, fields: dict[str, Any] | None) -> dict[str, Any]:
    source = fields.get("sourcePixels") if fields else None
    derivative = fields.get("derivativePixels") if fields else None
    return {
        "path": path,
        "source_pixels": source,
        "derivative_pixels": derivative,
        "depth": fields.get("depth") if fields else None,
        "lossless": None if source is None else source == derivative,
    }


@dataclass(frozen=True)
class _Master:
    """A master's codestream, and the TIFF's samples the proof compares it with."""

    encoded: bytes
    truth: lossless.Pixels
    source_pixels: str  # truth.checksum()


def _encode_master(source: str) -> _Master:
    """Encode the TIFF (fed by tifffile) while another thread decodes it for the
    proof (libtiff) and hashes those samples: the encoder has every core but
    waits on no one. Nothing is written; what cannot be kept is a StepError."""
    from concurrent.futures import ThreadPoolExecutor

    def for_proof() -> tuple[lossless.Pixels, str]:
        truth = lossless.read_for_proof(source)
        return truth, truth.checksum()

    ahead = _take_ahead(source)
    with ThreadPoolExecutor(1, thread_name_prefix="wsrun-proof-read") as pool:
        proof_read = pool.submit(for_proof)  # two decoders: neither trusts the other
        try:
            encoded = _result(ahead) if ahead is not None else None
            if encoded is None:
                encoded = lossless.encode(lossless.read_for_encoding(source))
            truth, source_pixels = proof_read.result()
        except (lossless.NotLossless, OSError) as e:
            raise StepError(
                f"cannot make a lossless master: {e}; nothing written", path=source
            ) from None
    return _Master(encoded, truth, source_pixels)


# ---- the next master, encoded while this one is proven --------------------------------

#: Masters encoded ahead for the next items of loops: the TIFF's identity -> its codestream.
#: The one for the item about to run is taken by its apply as the next one starts.
_ahead: dict[tuple[Any, ...], Future[bytes]] = {}
_ahead_lock = threading.Lock()
#: At most this many encodings held or running ahead (the oldest is forgotten).
AHEAD = 2


def prefetch(params: dict[str, Any], ctx: StepContext) -> None:
    """Start encoding the next item's master in memory, when its plan will write one:
    the encoder then runs while the current item's master is decoded by
    opj_decompress (another process), so both cores work. Nothing is written and
    nothing is trusted: apply uses the codestream only for the very same file
    (path, inode, size, times) and proves it like any other; a failed encoding is
    done again by apply, which reports it."""
    try:
        planned = plan(params, ctx)
    except Exception:  # the item's own plan reports it
        return
    data: _Data = planned.data
    identity = _identity(data.source)
    if identity is None or not any(t.lossless for t in data.targets):
        return
    future: Future[bytes] = Future()
    with _ahead_lock:
        if identity in _ahead:
            return
        _ahead[identity] = future
        while len(_ahead) > AHEAD:
            del _ahead[next(iter(_ahead))]
    # Here, not on the thread: the loop's apply that gives the memory back comes after.
    sharing.keep_memory(_sample_bytes(planned, identity[3]))
    # Not a daemon: a run that stops early waits for this encoding (no writes) to end.
    thread = threading.Thread(
        target=_encode_into, args=(data.source, future), name="wsrun-encode-ahead"
    )
    try:
        thread.start()
    except BaseException as e:  # no thread to be had: apply encodes it itself
        future.set_exception(e)
        raise


def _sample_bytes(planned: Plan, size: int) -> int:
    """About how many bytes the TIFF's samples take: its size, or more when its
    header says so (a compressed TIFF; 16-bit RGB reads as 8-bit RGB there)."""
    from PIL import Image

    width, height, mode = (planned.outputs[k] for k in ("width", "height", "mode"))
    if width is None or mode is None:
        return size
    try:
        bands = Image.getmodebands(mode)
    except (KeyError, ValueError):
        bands = 1
    return max(size, width * height * bands)


def _encode_into(source: str, future: Future[bytes]) -> None:
    """Encode ahead on one core (the current image's proof has the other)."""
    try:
        with sharing.one_core():
            future.set_result(lossless.encode(lossless.read_for_encoding(source)))
    except BaseException as e:  # handed to apply, which encodes again and reports
        future.set_exception(e)


def _identity(source: str) -> tuple[Any, ...] | None:
    """What tells one version of a file from another, short of reading it."""
    try:
        st = os.stat(source)
    except OSError:
        return None
    return (source, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _take_ahead(source: str) -> Future[bytes] | None:
    """The encoding started ahead for ``source`` as it is now, if any (taken: used once)."""
    identity = _identity(source)
    with _ahead_lock:
        return None if identity is None else _ahead.pop(identity, None)


def _result(future: Future[bytes]) -> bytes | None:
    """The codestream encoded ahead, or None when that failed (apply encodes again)."""
    try:
        return future.result()
    except Exception:
        return None


def _write_master(master: _Master, t: _Target, metadata: dict[str, str]) -> dict[str, Any]:
    """Write the master under its temporary name, decode it with the proof's own
    decoder (a child process that dies with the run), and rename it into place
    only when it holds exactly the TIFF's samples as libtiff decoded them;
    returns what ``_current`` would read from it."""
    # The proof's checksums go into the file, so both are known before it is written;
    # the decoding below makes the claim true or removes the file.
    wsrun_fields = {
        "derivation": t.derivation,
        "sourcePixels": master.source_pixels,
        "derivativePixels": master.source_pixels,
        "depth": master.truth.describe(),
    }
    packet = xmp.build_xmp(metadata, wsrun_fields)
    with fileio.atomic_write(t.path, mode=0o644) as f:
        f.write(master.encoded)
        xmp.append_jp2_xmp(f, packet)
        f.flush()
        try:
            decoded = lossless.decode_master(fileio.temp_path(t.path))
            lossless.compare(master.truth, decoded)
        except (lossless.ProofFailed, lossless.NotLossless) as e:
            raise StepError(f"lossless proof failed: {e}; not written", path=t.path) from None
        size = os.fstat(f.fileno()).st_size
    digest = _sha256(t.path)
    # Equal to the claim in the file, since every sample compared equal.
    return {
        "bytes": size,
        "sha256": digest,
        **wsrun_fields,
        "derivativePixels": decoded.checksum(),
    }


def _write(image: Image, t: _Target, metadata: dict[str, str]) -> dict[str, Any]:
    """Encode one access copy under its temporary name and rename it into place;
    returns what ``_current`` would read from it."""
    wsrun_fields = {"derivation": t.derivation}
    out = image
    if t.size is not None and t.size != image.size:
        out = _resized(image, t.size)
    if t.format == "jpeg":
        out = _for_jpeg(out)
    packet = xmp.build_xmp(metadata, wsrun_fields)
    with fileio.atomic_write(t.path, mode=0o644) as f:
        if t.format == "jp2":
            out.save(
                f,
                format="JPEG2000",
                irreversible=True,
                quality_mode="rates",
                quality_layers=[t.ratio or 20],
                # The colour transform (ICT) for RGB, as opj_compress and Kakadu do by default.
                mct=int(out.mode in _RGB),
            )
            xmp.append_jp2_xmp(f, packet)
        else:
            out.save(f, format="JPEG", quality=t.quality, xmp=packet, optimize=True)
        f.flush()
        size = os.fstat(f.fileno()).st_size
    digest = _sha256(t.path)
    return {"bytes": size, "sha256": digest, **wsrun_fields}


def _sha256(path: str) -> str:
    """The sha256 of a file just written (the destination is locked: it is ours)."""
    with open(path, "rb") as f:
        return hashing.hash_stream(f, "sha256")[0]


def _resized(image: Image, size: tuple[int, int]) -> Image:
    from PIL import Image as PILImage

    if image.mode.startswith("I;16"):  # Lanczos needs a mode it can filter
        return image.convert("I").resize(size, PILImage.Resampling.LANCZOS).convert(image.mode)
    return image.resize(size, PILImage.Resampling.LANCZOS, reducing_gap=3.0)


def _for_jpeg(image: Image) -> Image:
    """The image in a mode JPEG stores: 16-bit scaled to 8, alpha dropped."""
    if image.mode.startswith("I"):
        return image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if image.mode in ("L", "RGB", "CMYK"):
        return image
    if image.mode == "LA":
        return image.convert("L")
    return image.convert("RGB")


def _missing_parents(ctx: StepContext, directory: str) -> list[str]:
    missing = []
    while ctx.fs.lstat(directory) is None:
        missing.append(directory)
        directory = os.path.dirname(directory)
    if not ctx.fs.is_dir(directory):
        raise StepError("is not a directory", path=directory)
    return missing[::-1]
