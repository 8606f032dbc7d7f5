"""The ``s3-list`` step type: the objects under a prefix of S3 or any fsspec store."""

from __future__ import annotations

import fnmatch
from typing import Any

from wsrun.core.step import Plan, Result, StepContext
from wsrun.stores import objectstore as osx

NAME = "s3-list"
DOC = """List the objects under a URL prefix of S3 (or any fsspec store): keys, sizes, ETags.

Use it to find what a bucket already holds (to check a preservation copy, to
feed ``s3-download`` or a report). It only reads: one listing request per
1,000 objects, in a dry run too, so later steps can plan with its outputs.
"""

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["prefix"],
    "properties": {
        "prefix": {
            "description": "The URL prefix to list: every object below it, at any depth.",
            "type": "string",
            "minLength": 1,
            "examples": ["s3://preservation/{{ inputs.collection }}/"],
        },
        "match": {
            "description": "Keep only objects whose key (relative to the prefix) matches "
            "this glob (`*` also crosses /).",
            "type": "string",
            "minLength": 1,
            "examples": ["*.jp2"],
        },
        **osx.CLIENT_PROPERTIES,
    },
}

EXAMPLES = [
    """- id: preserved
  uses: s3-list
  with:
    prefix: s3://caltech-preservation/{{ inputs.collection }}/
    match: "*.jp2"
"""
]

OUTPUTS = {
    "objects": "every object, sorted by key: {url, key, size, etag} (key relative to the "
    "prefix; etag null where the store has none)",
    "urls": "the objects' URLs",
    "keys": "the objects' keys relative to the prefix",
    "count": "number of objects",
    "bytes": "their total size",
}


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    url = params["prefix"]
    store = osx.open_store(url, params, ctx)
    # "s3://b/run1" and "s3://b/run1/" both list run1/, never run10/.
    listed = store.path(url) + "/"
    try:
        found = osx.list_objects(store, listed)
    except Exception as e:
        raise store.error(e, url) from None
    objects = []
    for path, info in sorted(found.items()):
        key = path[len(listed) :]
        if params.get("match") and not fnmatch.fnmatchcase(key, params["match"]):
            continue
        objects.append({"url": store.url(path), "key": key, "size": info.size, "etag": info.etag})
    outputs = {
        "objects": objects,
        "urls": [o["url"] for o in objects],
        "keys": [o["key"] for o in objects],
        "count": len(objects),
        "bytes": sum(o["size"] for o in objects),
    }
    return Plan(outputs=outputs)


def apply(plan: Plan, ctx: StepContext) -> Result:
    return Result(outputs=plan.outputs)
