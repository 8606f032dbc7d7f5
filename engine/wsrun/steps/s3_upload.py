"""The ``s3-upload`` step type: upload files and trees to S3 or any fsspec store, verified.

One piece: single-part and multipart uploads, their verification and the
continuation of a killed multipart upload share the part layout and ETag arithmetic.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from wsrun.core import resumes
from wsrun.core.effects import Effect
from wsrun.core.fileio import TMP_SUFFIX, is_temp_name
from wsrun.core.fs import ContentUnknown, FileInfo
from wsrun.core.step import PATHS, Plan, Result, StepContext, StepError
from wsrun.stores import objectstore as osx

NAME = "s3-upload"
DOC = """Upload files and directory trees to S3 (or any fsspec store), verified and all-or-nothing per object.

Use it to send preservation masters or any product to object storage. Each
source lands at ``to/<basename>`` (a directory as its whole tree), or with
``base`` at ``to/<path relative to base>``, so the key layout follows the local
one. Files from ``multipart_threshold`` on go up in parts of ``part_size``.

Every body is sent with its Content-MD5, so the store refuses a corrupted
one, and the ETag the store reports is compared with the one computed
locally (the MD5, or for a multipart upload the MD5 of the parts' MD5s with
the part count); an object whose ETag differs is removed and the step fails.
An object is complete or absent: a PUT and a completed
multipart upload appear atomically, a failed multipart upload is aborted, and
other fsspec stores get a temporary key renamed into place. A multipart upload
cut short by a kill is continued by the next run on this host: it lists the
parts already on the store and sends only those whose ETag is not the MD5 of
the local bytes (missing, or changed since). An object already
there with the same size and ETag (or the same ``sha256`` metadata) is left
alone, so a second run reports ok. A dry run only lists and HEADs the store.
"""

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["sources", "to"],
    "properties": {
        "sources": {
            "description": "A local file or directory to upload, or a list of them; a "
            "directory is uploaded as its whole tree (symlinks to files are followed).",
            **PATHS,
            "examples": ["masters/{{ inputs.collection }}", ["a.jp2", "b.jp2"]],
        },
        "to": {
            "description": "The destination URL prefix: the objects land under it. "
            "`s3://bucket/prefix` goes through s3fs; any other fsspec URL works too.",
            "type": "string",
            "minLength": 1,
            "examples": ["s3://preservation/{{ inputs.collection }}", "memory://staging"],
        },
        "base": {
            "description": "Name each object by its path relative to this local directory "
            "(every source must lie inside it), instead of by the source's basename.",
            "type": "string",
            "minLength": 1,
            "examples": ["masters"],
        },
        "part_size": {
            "description": "Size of each part of a multipart upload (S3: at least 5 MiB; "
            "grown for files that would need more than 10,000 parts).",
            **osx.SIZE_SCHEMA,
            "default": "8MiB",
            "examples": ["16MiB", 8388608],
        },
        "multipart_threshold": {
            "description": "Files of this size or more are uploaded in parts (default: part_size).",
            **osx.SIZE_SCHEMA,
            "examples": ["64MiB"],
        },
        "sha256": {
            "description": "Also store the content's sha256 as object metadata "
            "(x-amz-meta-sha256); it then also tells an unchanged object apart from a "
            "changed one when the ETag cannot (an object uploaded with other part sizes).",
            "type": "boolean",
            "default": False,
        },
        "workers": {
            "description": "Files, and parts of a file, uploaded in parallel.",
            "type": "integer",
            "minimum": 1,
            "maximum": 64,
            "default": 8,
        },
        **osx.CLIENT_PROPERTIES,
    },
}

EXAMPLES = [
    """- id: preserve
  uses: s3-upload
  with:
    sources: "{{ steps.convert.outputs.files }}"
    base: masters
    to: s3://caltech-preservation/{{ inputs.collection }}
    sha256: true
""",
    """- id: to_minio
  uses: s3-upload
  with:
    sources: products/run42
    to: s3://archive/incoming
    endpoint_url: "{{ settings.s3_endpoint }}"
    credentials: {access_key_id_setting: s3_key, secret_access_key_setting: s3_secret}
    part_size: 16MiB
""",
]

OUTPUTS = {
    "urls": "URL of every object (uploaded or already in place), sorted",
    "uploaded": "number of objects written",
    "unchanged": "number of objects already in place with the same content",
    "bytes": "total size of all objects (uploaded and unchanged)",
    "etags": "{url: ETag} of every object (for uploaded ones known only after a real run)",
    "sha256": "{url: sha256} of every object uploaded with `sha256: true` "
    "(known only after a real run)",
}


@dataclass
class Upload:
    """One file going to one object."""

    source: str
    path: str  # object path without protocol
    size: int


@dataclass
class UploadJob:
    store: osx.Store
    uploads: list[Upload]
    part_size: int
    threshold: int
    sha256: bool
    workers: int
    etags: dict[str, str]


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    to = params["to"]
    protocol, _ = osx.split_url(to)
    part_size = osx.parse_size(params.get("part_size", osx.DEFAULT_PART_SIZE))
    threshold = osx.parse_size(params.get("multipart_threshold", part_size))
    if protocol == "s3" and part_size < osx.MIN_PART_SIZE:
        raise StepError("part_size must be at least 5 MiB for S3", path=to)
    if not 1 <= threshold <= osx.MAX_PUT_SIZE:
        raise StepError("multipart_threshold must be between 1 byte and 5 GiB", path=to)
    workers = int(params.get("workers", 8))
    store = osx.open_store(to, params, ctx, workers)
    prefix = store.path(to)
    if store.is_s3 and not prefix:
        raise StepError("the URL names no bucket", path=to)
    files = _local_files(params, ctx, prefix)
    try:
        existing = osx.list_objects(store, _scope([path for _, path, _ in files])) if files else {}
    except Exception as e:
        raise store.error(e, to) from None
    want_sha = bool(params.get("sha256", False))
    effects: list[Effect] = []
    uploads: list[Upload] = []
    etags: dict[str, str] = {}

    def same(item: tuple[str, str, FileInfo]) -> str | None:
        """The object's ETag when it already holds this file's content."""
        source, path, info = item
        found = existing.get(path)
        if found is None or not info.size_known or found.size != info.size:
            return None
        try:
            return _unchanged_etag(store, source, info, found, ctx, part_size, threshold)
        except Exception as e:
            raise store.error(e, store.url(path)) from None

    suspects = [f for f in files if f[1] in existing]
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(suspects)))) as pool:
        known = dict(zip([f[1] for f in suspects], pool.map(same, suspects), strict=True))
    for source, path, info in files:
        etag = known.get(path)
        if etag is not None:
            etags[store.url(path)] = etag
            continue
        size = info.size if info.size_known else None  # a dry run: known once written
        uploads.append(Upload(source, path, info.size))
        effects.append(Effect("upload", store.url(path), bytes=size, source=source))
    urls = sorted(store.url(path) for _, path, _ in files)
    outputs = {
        "urls": urls,
        "uploaded": len(uploads),
        "unchanged": len(files) - len(uploads),
        "bytes": sum(info.size for _, _, info in files),
        "etags": dict(sorted(etags.items())),
        "sha256": {},
    }
    job = UploadJob(store, uploads, part_size, threshold, want_sha, workers, etags)
    return Plan(effects=effects, outputs=outputs, data=job)


def _local_files(
    params: dict[str, Any], ctx: StepContext, prefix: str
) -> list[tuple[str, str, FileInfo]]:
    """(local path, object path, info) of every file to send, in source order."""
    sources = params["sources"]
    if isinstance(sources, str):
        sources = [sources]
    base = ctx.path(params["base"]) if params.get("base") else None
    out: dict[str, tuple[str, str, FileInfo]] = {}

    def add(source: str, rel: str) -> None:
        info = ctx.fs.stat(source)
        if info is None or not info.is_file:
            raise StepError("not a regular file (or a link to one)", path=source)
        path = f"{prefix}/{rel}" if prefix else rel
        if path in out and out[path][0] != source:
            raise StepError(f"two sources map to the same object {path}", path=source)
        out[path] = (source, path, info)

    for raw in sources:
        source = ctx.path(raw)
        info = ctx.fs.stat(source)
        if info is None:
            raise StepError("no such file or directory", path=source)
        if base is not None:
            rel = os.path.relpath(source, base)
            if rel == ".." or rel.startswith("../"):
                raise StepError(f"is not inside base {base}", path=source)
        else:
            rel = os.path.basename(source)
        if info.is_dir:
            for sub, entry in ctx.fs.walk(source):
                name = os.path.basename(sub)
                if entry.is_dir or (name.endswith(TMP_SUFFIX) and is_temp_name(name)):
                    continue
                add(os.path.join(source, sub), sub if rel == "." else f"{rel}/{sub}")
        else:
            add(source, rel)
    return list(out.values())


def _scope(paths: list[str]) -> str:
    """The narrowest prefix holding every object path: one listing finds what is
    already there without walking the rest of a large bucket."""
    if len(paths) == 1:
        return paths[0]
    common = os.path.commonprefix(paths)
    return common[: common.rfind("/") + 1]


def _unchanged_etag(
    store: osx.Store,
    source: str,
    info: FileInfo,
    found: osx.ObjectInfo,
    ctx: StepContext,
    part_size: int,
    threshold: int,
) -> str | None:
    """The object's ETag when it already holds this file's content, else None."""
    try:
        f = ctx.fs.open(source)
    except ContentUnknown:
        return None  # a dry run: an earlier step writes it; its content decides then
    remote = found.etag
    with f:
        if not store.is_s3:
            local = osx.digest_stream(f, osx.LocalDigest(info.size, part_size, info.size + 1))
            with store.fs.open(found.path, "rb") as r:
                other = osx.digest_stream(r, osx.LocalDigest(info.size, part_size, info.size + 1))
            return local.etag() if local.etag() == other.etag() else None
        assert remote is not None
        if "-" in remote:
            parts = int(remote.rsplit("-", 1)[1])
            step = osx.effective_part_size(info.size, part_size)
            same_layout = info.size >= threshold and -(-info.size // step) == parts
        else:
            same_layout = info.size < threshold
        digest = osx.LocalDigest(info.size, part_size, threshold, sha256=not same_layout)
        osx.digest_stream(f, digest)
    if same_layout:
        return remote if digest.etag() == remote else None
    meta = (osx.head(store, found.path) or {}).get("Metadata", {})
    return remote if meta.get(osx.SHA256_META) == digest.sha256() else None


def apply(plan: Plan, ctx: StepContext) -> Result:
    job: UploadJob = plan.data
    task = ctx.progress.task(
        "upload", total_bytes=sum(u.size for u in job.uploads), total_files=len(job.uploads)
    )
    etags = dict(job.etags)
    shas: dict[str, str] = {}
    send = _s3_put if job.store.is_s3 else _fs_put
    sender = Sender(ctx, task, ThreadPoolExecutor(max_workers=job.workers), threading.Event())

    def one(upload: Upload) -> None:
        url = job.store.url(upload.path)
        try:
            sender.check()
            etag, sha = send(job, upload, sender)
        except Stopped:
            raise
        except StepError as e:
            raise StepError(job.store.scrub(e.message), path=e.path or url) from None
        except Exception as e:
            raise job.store.error(e, url) from None
        etags[url] = etag
        if sha:
            shas[url] = sha
        task.advance(files=1)

    try:
        if len(job.uploads) == 1:
            one(job.uploads[0])
        elif job.uploads:
            with ThreadPoolExecutor(max_workers=job.workers) as pool:
                futures = [pool.submit(one, u) for u in job.uploads]
                try:
                    wait(futures, return_when=FIRST_EXCEPTION)
                finally:
                    # A failure or Ctrl-C stops the rest: no new file or part starts,
                    # and the multipart uploads in progress are aborted.
                    if not all(f.done() and f.exception() is None for f in futures):
                        sender.stop.set()
            errors = [f.exception() for f in futures if f.exception() is not None]
            if errors:  # the failure itself, not the uploads it stopped
                raise next((e for e in errors if not isinstance(e, Stopped)), errors[0])
    except BaseException:
        sender.stop.set()
        raise
    finally:
        sender.parts.shutdown(cancel_futures=True)
        task.close()
    outputs = {**plan.outputs, "etags": dict(sorted(etags.items())), "sha256": shas}
    return Result(effects=list(plan.effects), outputs=outputs)


class Stopped(StepError):
    """An upload given up because another one of the same step failed."""


@dataclass
class Sender:
    """What the uploads of one step share: the pool parts go through, and the
    flag that stops every upload once one has failed."""

    ctx: StepContext
    task: Any
    parts: ThreadPoolExecutor
    stop: threading.Event

    def check(self) -> None:
        """Between units of work: give up when told to, or past the step's timeout."""
        if self.stop.is_set():
            raise Stopped("stopped: another upload of this step failed")
        self.ctx.check_deadline()


def _metadata(job: UploadJob, upload: Upload) -> tuple[dict[str, str], str | None]:
    if not job.sha256:
        return {}, None
    h = hashlib.sha256()
    with open(upload.source, "rb") as f:
        while chunk := f.read(8 * osx.MiB):
            h.update(chunk)
    return {osx.SHA256_META: h.hexdigest()}, h.hexdigest()


def _s3_put(job: UploadJob, upload: Upload, sender: Sender) -> tuple[str, str | None]:
    """One object through the S3 API: a PUT, or a multipart upload aborted on failure."""
    store = job.store
    bucket, key = osx.bucket_key(upload.path)
    if upload.size < job.threshold:
        with open(upload.source, "rb") as f:
            data = f.read()
        if len(data) != upload.size:
            raise StepError("changed size since it was planned", path=upload.source)
        md5 = hashlib.md5(data).digest()
        meta: dict[str, str] = {}
        sha = None
        if job.sha256:
            sha = hashlib.sha256(data).hexdigest()
            meta[osx.SHA256_META] = sha
        reply = store.call(
            "put_object",
            Bucket=bucket,
            Key=key,
            Body=data,
            ContentMD5=osx.content_md5(md5),
            Metadata=meta,
        )
        _check_stored(store, upload.path, reply, md5.hex())
        sender.task.advance(bytes=upload.size)
        return md5.hex(), sha
    meta, sha = _metadata(job, upload)
    part_size = osx.effective_part_size(upload.size, job.part_size)
    url = store.url(upload.path)
    records = resumes.records()
    upload_id, listed = _resumable(store, records, url, upload, part_size, sha)
    if upload_id is None:
        created = store.call("create_multipart_upload", Bucket=bucket, Key=key, Metadata=meta)
        upload_id = created["UploadId"]
        mtime_ns = os.stat(upload.source).st_mtime_ns
        records.start_upload(
            resumes.UploadRecord(
                url, upload_id, upload.source, upload.size, mtime_ns, part_size, sha, os.getpid()
            )
        )
    futures: list[Future[dict[str, Any]]] = []
    fd: int | None = None
    try:
        fd = reading = os.open(upload.source, os.O_RDONLY)
        if os.fstat(fd).st_size != upload.size:
            raise StepError("changed size since it was planned", path=upload.source)

        def part(number: int, offset: int, length: int) -> dict[str, Any]:
            sender.check()
            data = os.pread(reading, length, offset)
            if len(data) != length:
                raise StepError("changed size since it was planned", path=upload.source)
            md5 = hashlib.md5(data).digest()
            if listed.get(number) == (md5.hex(), length):  # sent by a killed run: kept
                sender.task.advance(bytes=length)
                return {"PartNumber": number, "ETag": f'"{md5.hex()}"', "md5": md5}
            reply = store.call(
                "upload_part",
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
                ContentMD5=osx.content_md5(md5),
            )
            _check_etag(reply, md5.hex(), f"{store.url(upload.path)} part {number}")
            sender.task.advance(bytes=length)
            return {"PartNumber": number, "ETag": reply["ETag"], "md5": md5}

        futures = [
            sender.parts.submit(part, n, offset, length)
            for n, (offset, length) in enumerate(osx.part_ranges(upload.size, part_size), start=1)
        ]
        parts = [f.result() for f in futures]
        expected = osx.composite_etag([p.pop("md5") for p in parts])
        try:
            reply = store.call(
                "complete_multipart_upload",
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except Exception:
            reply = _completed_anyway(store, upload.path, upload.size, expected)
            if reply is None:
                raise
    except BaseException:
        # Parts still in flight would outlive an abort: stop them first.
        for f in futures:
            f.cancel()
        wait(futures)
        with contextlib.suppress(Exception):
            store.call("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
            records.end_upload(url, upload_id)
        raise
    finally:
        if fd is not None:
            os.close(fd)  # after every part has stopped reading it
    records.end_upload(url, upload_id)
    _check_stored(store, upload.path, reply, expected)
    return expected, sha


def _completed_anyway(
    store: osx.Store, path: str, size: int, expected: str
) -> dict[str, Any] | None:
    """The object, when a completion that failed was carried out after all: a
    slow store (a big object, a busy server) can outlast the client's read
    timeout, and the client's retry then finds the upload gone (NoSuchUpload,
    or a 500 from moto). The object counts as ours only if it has the size and
    the multipart ETag of the parts just sent; None otherwise."""
    try:
        found = osx.head(store, path)
    except Exception:  # noqa: BLE001 - the completion's own error is the one to report
        return None
    if found is None or int(found.get("ContentLength", -1)) != size:
        return None
    return found if str(found.get("ETag", "")).strip('"') == expected else None


def _resumable(
    store: osx.Store,
    records: resumes.Records,
    url: str,
    upload: Upload,
    part_size: int,
    sha: str | None,
) -> tuple[str | None, dict[int, tuple[str, int]]]:
    """The multipart upload a killed run left for this object, and the parts
    already on the store ({number: (ETag, size)}); (None, {}) when there is
    none to continue.

    Only an upload this host recorded is continued (never another client's),
    only when its owner is dead, and only with the same source, size, part size
    and metadata; a stale one is aborted. Each listed part is then reused only
    if its ETag is the MD5 of the local bytes it stands for (checked as the
    part comes up), so a source changed since the kill is sent again where it
    changed.
    """
    record = records.upload(url)
    if record is None or (record.pid != os.getpid() and resumes.pid_alive(record.pid)):
        return None, {}
    bucket, key = osx.bucket_key(upload.path)
    same = (record.source, record.size, record.part_size, record.sha256) == (
        upload.source,
        upload.size,
        part_size,
        sha,
    )
    listed: dict[int, tuple[str, int]] = {}
    try:
        if same:
            marker = 0
            while True:
                page = store.call(
                    "list_parts",
                    Bucket=bucket,
                    Key=key,
                    UploadId=record.upload_id,
                    PartNumberMarker=marker,
                )
                for p in page.get("Parts", []):
                    listed[int(p["PartNumber"])] = (str(p["ETag"]).strip('"'), int(p["Size"]))
                if not page.get("IsTruncated"):
                    break
                marker = int(page["NextPartNumberMarker"])
            records.start_upload(
                resumes.UploadRecord(
                    url,
                    record.upload_id,
                    upload.source,
                    upload.size,
                    record.mtime_ns,
                    part_size,
                    sha,
                    os.getpid(),
                )
            )
            return record.upload_id, listed
        store.call("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=record.upload_id)
    except Exception:  # noqa: BLE001 - gone (completed, aborted, expired): start afresh
        pass
    records.end_upload(url, record.upload_id)
    return None, {}


def _check_stored(store: osx.Store, path: str, reply: dict[str, Any], expected: str) -> None:
    """The object's ETag is the local content's, or the object (whose bytes are
    not the file's) is removed and the upload fails."""
    try:
        _check_etag(reply, expected, store.url(path))
    except StepError as e:
        bucket, key = osx.bucket_key(path)
        try:
            store.call("delete_object", Bucket=bucket, Key=key)
        except Exception:
            raise StepError(f"{e.message}; the object could not be removed", path=e.path) from None
        raise StepError(f"{e.message}; the object was removed", path=e.path) from None


def _check_etag(reply: dict[str, Any], expected: str, what: str) -> None:
    got = str(reply.get("ETag", "")).strip('"')
    if got != expected:
        raise StepError(
            f"the store reports ETag {got or 'none'}, the local content gives {expected}", path=what
        )


def _fs_put(job: UploadJob, upload: Upload, sender: Sender) -> tuple[str, str | None]:
    """One object through a generic fsspec filesystem: written under a temporary
    key, read back and checked, then moved onto the final key."""
    fs = job.store.fs
    parent, name = os.path.split(upload.path)
    tmp = f"{parent}/.{name}{TMP_SUFFIX}" if parent else f".{name}{TMP_SUFFIX}"
    written = osx.LocalDigest(upload.size, job.part_size, upload.size + 1, sha256=job.sha256)
    try:
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with open(upload.source, "rb") as src, fs.open(tmp, "wb") as dst:
            while chunk := src.read(8 * osx.MiB):
                sender.check()
                written.update(chunk)
                dst.write(chunk)
                sender.task.advance(bytes=len(chunk))
        with fs.open(tmp, "rb") as back:
            stored = osx.digest_stream(back, osx.LocalDigest(upload.size, 1, upload.size + 1))
        if stored.etag() != written.etag():
            raise StepError(
                f"the store holds MD5 {stored.etag()}, the local content gives {written.etag()}",
                path=job.store.url(upload.path),
            )
        fs.mv(tmp, upload.path)
    except BaseException:
        with contextlib.suppress(Exception):
            if fs.exists(tmp):
                fs.rm(tmp)
        raise
    return written.etag(), written.sha256()
