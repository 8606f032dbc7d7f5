"""Object stores by URL, for the ``s3-upload``, ``s3-download`` and ``s3-list`` steps.

A store is any fsspec URL: ``s3://bucket/prefix`` goes through s3fs (AWS or any
S3-compatible endpoint such as MinIO), ``memory://`` or ``file://`` or another
fsspec backend through its own filesystem. The three steps share what lives here:
how a URL and the step's parameters become a filesystem, where credentials come
from (the standard AWS chain, or settings the recipe names, never values in the
recipe), how S3 ETags are computed locally, and how a store's errors become one
line that names the URL and holds no secret.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from wsrun.core.settings import MASK
from wsrun.core.step import StepContext, StepError

MiB = 1 << 20
#: S3's smallest part (all but the last) and its most parts per upload.
MIN_PART_SIZE = 5 * MiB
MAX_PARTS = 10_000
#: S3's largest single PUT.
MAX_PUT_SIZE = 5 << 30
DEFAULT_PART_SIZE = 8 * MiB
#: The object metadata key holding the sha256 of the content (``x-amz-meta-sha256``).
SHA256_META = "sha256"

#: Parameters every object-store step takes: where the store is and how to log in.
CLIENT_PROPERTIES: dict[str, Any] = {
    "endpoint_url": {
        "description": "The S3 API endpoint, for MinIO, Ceph and other S3-compatible stores "
        "(default: AWS, or $AWS_ENDPOINT_URL).",
        "type": "string",
        "minLength": 1,
        "examples": ["http://minio.example.org:9000"],
    },
    "region": {
        "description": "The region of the bucket (default: the AWS chain's, e.g. $AWS_REGION).",
        "type": "string",
        "minLength": 1,
        "examples": ["us-west-2"],
    },
    "credentials": {
        "description": "Where the keys come from. Without it, the standard AWS chain "
        "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, an instance "
        "role). The *_setting values are the names of settings the recipe declares under "
        "`settings:` (mark them `secret: true`); the values themselves never appear in "
        "the recipe, the plan, the logs or the journal.",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "access_key_id_setting": {"type": "string", "minLength": 1},
            "secret_access_key_setting": {"type": "string", "minLength": 1},
            "session_token_setting": {"type": "string", "minLength": 1},
            "profile": {
                "description": "A profile of ~/.aws/config and ~/.aws/credentials.",
                "type": "string",
                "minLength": 1,
            },
            "anonymous": {
                "description": "Send unsigned requests (public buckets).",
                "type": "boolean",
            },
        },
        "examples": [
            {"access_key_id_setting": "s3_key", "secret_access_key_setting": "s3_secret"},
            {"profile": "archive"},
        ],
    },
    "retries": {
        "description": "Attempts per request before a transient error (connection "
        "refused, throttling) fails the step.",
        "type": "integer",
        "minimum": 1,
        "maximum": 10,
        "default": 3,
    },
    "options": {
        "description": "Extra fsspec storage options for backends other than S3 (never "
        "credentials: use `credentials`).",
        "type": "object",
        "examples": [{"auto_mkdir": True}],
    },
}

SIZE_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {"type": "integer", "minimum": 1},
        {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*([KMGT]i?B?|B)?\s*$"},
    ]
}
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: int | str) -> int:
    """Bytes from 8388608, "8MiB", "8 MB" or "8M" (binary units throughout)."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)i?B?\s*", value, re.I)
    if not m:
        raise StepError(f"not a size: {value!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def split_url(url: str) -> tuple[str, str]:
    """(protocol, path without protocol and without trailing slash)."""
    protocol, sep, path = url.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", protocol):
        raise StepError("not a URL: write scheme://... (s3://bucket/prefix, file:///dir)", path=url)
    protocol = protocol.lower()
    if protocol == "s3a":
        protocol = "s3"
    return protocol, path.rstrip("/") if protocol != "file" else path.rstrip("/") or "/"


@dataclass
class Store:
    """An open object store: the filesystem and what the steps need to talk about it."""

    fs: Any
    protocol: str
    endpoint: str | None
    #: Credential values to scrub from any message, however it came to hold one.
    secrets: tuple[str, ...] = field(default=(), repr=False)

    @property
    def is_s3(self) -> bool:
        return self.protocol == "s3"

    def url(self, path: str) -> str:
        """The URL of an object path as the steps report it."""
        return f"{self.protocol}://{path}" if self.is_s3 else self.fs.unstrip_protocol(path)

    def path(self, url: str) -> str:
        """The object path of ``url`` (bucket/key for S3), without a trailing slash."""
        if self.is_s3:
            return split_url(url)[1]
        return self.fs._strip_protocol(url).rstrip("/")

    def call(self, method: str, **kwargs: Any) -> Any:
        """One S3 API call through s3fs's client (its retries, its event loop)."""
        return self.fs.call_s3(method, **kwargs)

    def scrub(self, text: str) -> str:
        """``text`` with every credential value of this store masked."""
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, MASK)
        return text

    def error(self, exc: BaseException, url: str) -> StepError:
        """A store failure as one line naming ``url``, with no secret in it."""
        return StepError(self.scrub(describe(exc, self.endpoint)), path=url)


def describe(exc: BaseException, endpoint: str | None) -> str:
    """What went wrong, in the words an operator can act on."""
    if isinstance(exc, StepError):
        return exc.message
    name = type(exc).__name__
    text = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
    code = _error_code(exc)
    where = endpoint or "the default AWS endpoint"
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return (
            "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile), "
            "or name settings in the step's `credentials`"
        )
    if code == "NoSuchBucket" or "bucket does not exist" in text.lower():
        return "no such bucket"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403") or (
        isinstance(exc, PermissionError)
    ):
        return f"access denied ({code or 'check the credentials'}): {text}"
    unreachable = ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError")
    if name in unreachable or isinstance(exc, ConnectionError):
        return f"cannot reach the store at {where}: {text}"
    return f"{code or name}: {text}"


def _error_code(exc: BaseException) -> str | None:
    """The S3 error code of a botocore ClientError, also when s3fs wrapped it."""
    for e in (exc, exc.__cause__, exc.__context__):
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code") or "") or None
    return None


def _setting(ctx: StepContext, field_name: str, alias: str) -> str:
    if alias not in ctx.settings:
        raise StepError(
            f"credentials.{field_name} names '{alias}', which is not a setting the recipe "
            "declares under settings:"
        )
    value = ctx.settings[alias]
    if not value:
        raise StepError(f"credentials.{field_name}: setting '{alias}' is empty")
    return str(value)


def _import_s3fs() -> None:
    """Import s3fs without aiobotocore's optional httpx backend, which it would load
    only because httpx is installed (for the http step) and never use here: a quarter
    of a second of every run's start-up. Falls back to a plain import."""
    if "s3fs" in sys.modules or "httpx" in sys.modules:
        return
    sys.modules["httpx"] = None  # type: ignore[assignment]  # "not installed" to importers
    try:
        import s3fs  # noqa: F401
    except ImportError:
        pass  # a later aiobotocore that needs httpx: the plain import below
    finally:
        del sys.modules["httpx"]


def open_store(url: str, params: dict[str, Any], ctx: StepContext, workers: int = 8) -> Store:
    """The filesystem behind ``url``, configured from the step's parameters.

    S3 filesystems are cached for the process (``_s3_filesystem``): opening a
    client costs 0.3-0.9 s, and a recipe's steps use the same store again and
    again. Other protocols get a fresh instance each time.
    """
    import fsspec

    protocol, _ = split_url(url)
    if protocol == "s3":
        _import_s3fs()
    options: dict[str, Any] = dict(params.get("options") or {})
    secrets: list[str] = []
    endpoint = params.get("endpoint_url")
    if protocol == "s3":
        creds = params.get("credentials") or {}
        for field_name, option in (
            ("access_key_id_setting", "key"),
            ("secret_access_key_setting", "secret"),
            ("session_token_setting", "token"),
        ):
            if creds.get(field_name):
                options[option] = _setting(ctx, field_name, creds[field_name])
                secrets.append(options[option])
        if creds.get("profile"):
            options["profile"] = creds["profile"]
        if creds.get("anonymous"):
            options["anon"] = True
        client: dict[str, Any] = {}
        if endpoint:
            options["endpoint_url"] = endpoint
        if params.get("region"):
            client["region_name"] = params["region"]
        options["client_kwargs"] = client
        options["config_kwargs"] = _client_config(workers)
        options["use_listings_cache"] = False
        options["default_block_size"] = 16 * MiB
    for key in ("key", "secret", "token"):
        if protocol != "s3" and key in options:
            raise StepError(f"options.{key}: put credentials in `credentials`, not `options`")
    try:
        if protocol == "s3":
            fs = _s3_filesystem(options, int(params.get("retries", 3)))
        else:
            fs = fsspec.filesystem(protocol, skip_instance_cache=True, **options)
    except (ImportError, ValueError) as e:
        raise StepError(f"no filesystem for {protocol}://: {e}", path=url) from None
    if not endpoint and protocol == "s3":
        endpoint = ctx.env.get("AWS_ENDPOINT_URL_S3") or ctx.env.get("AWS_ENDPOINT_URL")
    return Store(fs, protocol, endpoint, tuple(secrets))


_s3_cache: dict[str, Any] = {}
_s3_cache_lock = threading.Lock()


def _s3_filesystem(options: dict[str, Any], retries: int) -> Any:
    """One s3fs filesystem per (endpoint, credentials, options, retries) for the
    process, shared by every step and thread that asks for the same.

    The key is a SHA-256 digest, so no credential is kept in it, and it includes
    the AWS variables of the environment: keys the default chain found for one
    step are never used for a step run under other ones. fsspec's own instance
    cache is not used: its key holds the options, credentials included."""
    import fsspec

    aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    material = json.dumps([options, retries, aws], sort_keys=True, default=repr)
    key = hashlib.sha256(material.encode()).hexdigest()
    with _s3_cache_lock:
        fs = _s3_cache.get(key)
        if fs is None:
            fs = fsspec.filesystem("s3", skip_instance_cache=True, **options)
            fs.retries = retries  # s3fs's attempts per request
            _s3_cache[key] = fs
    return fs


def _client_config(workers: int) -> dict[str, Any]:
    """botocore client settings: s3fs does the retrying; one connection per worker."""
    from botocore.config import Config

    config: dict[str, Any] = {
        "retries": {"max_attempts": 1, "mode": "standard"},
        "max_pool_connections": 2 * workers + 2,
        "connect_timeout": 10,
        # Every body goes with a signed Content-MD5 the store checks, so a signed
        # sha256 of the payload (what botocore does over plain http) adds CPU, not safety.
        "s3": {"payload_signing_enabled": False},
    }
    if "request_checksum_calculation" in Config.OPTION_DEFAULTS:  # botocore >= 1.36
        # Content-MD5 is what the steps send and check; a second checksum per
        # request would cost CPU and prove nothing more.
        config["request_checksum_calculation"] = "when_required"
        config["response_checksum_validation"] = "when_required"
    return config


def bucket_key(path: str) -> tuple[str, str]:
    """("bucket", "key/in/bucket") of an S3 path without protocol."""
    bucket, _, key = path.partition("/")
    return bucket, key


@dataclass(frozen=True)
class ObjectInfo:
    """One object as a listing or HEAD reports it."""

    path: str  # without protocol: bucket/key for S3
    size: int
    etag: str | None  # without quotes; None where the store has none


def list_objects(store: Store, prefix: str) -> dict[str, ObjectInfo]:
    """Every object whose path starts with ``prefix`` (a "directory" ends in /)."""
    if store.is_s3:
        bucket, key_prefix = bucket_key(prefix)
        found: dict[str, ObjectInfo] = {}
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": key_prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = store.call("list_objects_v2", **kwargs)
            for item in page.get("Contents", []):
                path = f"{bucket}/{item['Key']}"
                found[path] = ObjectInfo(path, int(item["Size"]), item["ETag"].strip('"'))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return found
    base = prefix.rstrip("/")
    if not store.fs.exists(base):
        return {}
    if store.fs.isfile(base):
        info = store.fs.info(base)
        return {base: ObjectInfo(base, int(info["size"]), None)} if base.startswith(prefix) else {}
    out = {}
    for path, info in store.fs.find(base, detail=True).items():
        path = path.split("://", 1)[-1]
        if path.startswith(prefix) and info.get("type", "file") == "file":
            out[path] = ObjectInfo(path, int(info["size"]), None)
    return out


def head(store: Store, path: str) -> dict[str, Any] | None:
    """S3 HEAD of one object (its metadata included), None when there is none."""
    bucket, key = bucket_key(path)
    try:
        return store.call("head_object", Bucket=bucket, Key=key)
    except FileNotFoundError:
        return None


def part_ranges(size: int, part_size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of each part of a multipart upload of ``size`` bytes."""
    for offset in range(0, size, part_size):
        yield offset, min(part_size, size - offset)


def effective_part_size(size: int, part_size: int) -> int:
    """The part size used for ``size`` bytes: grown (in MiB steps) to stay within 10,000 parts."""
    while -(-size // part_size) > MAX_PARTS:
        part_size += MiB
    return part_size


def composite_etag(part_md5s: list[bytes]) -> str:
    """The ETag S3 gives a multipart object: MD5 of the parts' MD5s, dash, part count."""
    return f"{hashlib.md5(b''.join(part_md5s)).hexdigest()}-{len(part_md5s)}"


def content_md5(digest: bytes) -> str:
    """The Content-MD5 header of a body with this MD5."""
    return base64.b64encode(digest).decode("ascii")


class LocalDigest:
    """The ETag S3 would give a file uploaded with ``part_size`` parts from
    ``threshold`` bytes on (the plain MD5 below it), and optionally its sha256,
    fed block by block in order."""

    def __init__(self, size: int, part_size: int, threshold: int, sha256: bool = False) -> None:
        self.multipart = size >= threshold
        self.part_size = effective_part_size(size, part_size)
        self.whole = hashlib.md5()
        self.part = hashlib.md5()
        self.in_part = 0
        self.parts: list[bytes] = []
        self.sha = hashlib.sha256() if sha256 else None

    def update(self, data: bytes | memoryview) -> None:
        if self.sha is not None:
            self.sha.update(data)
        if not self.multipart:
            self.whole.update(data)
            return
        view = memoryview(data)
        while len(view):
            take = min(len(view), self.part_size - self.in_part)
            self.part.update(view[:take])
            self.in_part += take
            view = view[take:]
            if self.in_part == self.part_size:
                self.parts.append(self.part.digest())
                self.part, self.in_part = hashlib.md5(), 0

    def etag(self) -> str:
        if not self.multipart:
            return self.whole.hexdigest()
        parts = self.parts + ([self.part.digest()] if self.in_part or not self.parts else [])
        return composite_etag(parts)

    def sha256(self) -> str | None:
        return None if self.sha is None else self.sha.hexdigest()


def digest_stream(f: Any, digest: LocalDigest, block: int = 4 * MiB) -> LocalDigest:
    while chunk := f.read(block):
        digest.update(chunk)
    return digest


def etag_candidates(size: int, etag: str, part_size: int) -> list[LocalDigest]:
    """Digests that could reproduce ``etag`` for ``size`` bytes: the plain MD5, or
    for a multipart ETag each common part size that gives its part count."""
    if "-" not in etag:
        return [LocalDigest(size, part_size, size + 1)]
    count = int(etag.rsplit("-", 1)[1])
    guesses = [part_size, -(-size // count), -(-size // count // MiB) * MiB, 8 * MiB, 5 * MiB]
    guesses += [16 * MiB, 15 * MiB, 64 * MiB, 100 * MiB]
    out: list[LocalDigest] = []
    for guess in dict.fromkeys(guesses):
        if guess > 0 and -(-size // guess) == count:
            out.append(LocalDigest(size, guess, 0))
    return out


def matches_etag(f: Any, size: int, etag: str, part_size: int) -> bool | None:
    """Whether the content read from ``f`` has this ETag; None when no part
    size we can guess gives its part count (it cannot be told)."""
    candidates = etag_candidates(size, etag, part_size)
    if not candidates:
        return None
    while chunk := f.read(4 * MiB):
        for digest in candidates:
            digest.update(chunk)
    return any(d.etag() == etag for d in candidates)
