"""Zstandard for tar.zst and the journal's blobs: the standard library's
``compression.zstd`` (PEP 784, Python 3.14 and later) or, before 3.14, its
backport ``backports.zstd`` (the same module, with the same libzstd inside).

Why not the ``zstandard`` distribution: it ships two builds of libzstd with
debug symbols (24 MB installed, more than half of wsrun's core install); the
backport is 1.8 MB and needs nothing at all from Python 3.14 on. The frames are
the same zstd format, so archives and journals written with either read with
the other.
"""

from __future__ import annotations

import sys

if sys.version_info >= (3, 14):
    from compression.zstd import (
        CompressionParameter,
        ZstdCompressor,
        ZstdError,
        ZstdFile,
        compress,
    )
else:
    from backports.zstd import (
        CompressionParameter,
        ZstdCompressor,
        ZstdError,
        ZstdFile,
        compress,
    )

__all__ = ["CompressionParameter", "ZstdCompressor", "ZstdError", "ZstdFile", "compress"]
