"""The ``s3-remove`` step type: delete objects from S3 or any fsspec store."""

from __future__ import annotations

from typing import Any

from wsrun.core.effects import Effect, remove
from wsrun.core.step import PATHS, Plan, Result, StepContext, StepError
from wsrun.stores import objectstore as osx

NAME = "s3-remove"
DOC = """Delete objects from S3 (or any fsspec store) by URL; objects already gone are fine.

Recipes use it to clean up after themselves: the Distillery deletes a
preservation master it uploaded when recording it in ArchivesSpace failed, so
the bucket never holds an object no catalogue knows (an orphan). Each URL
names one object; one that does not exist is left out of the effects, so a
second run reports ok. A dry run only looks the objects up.
"""

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["urls"],
    "properties": {
        "urls": {
            "description": "The URL of an object to delete, or a list of them.",
            **PATHS,
            "examples": ["s3://preservation/MS01/Series_1/MS01_001/MS01_001_0001.jp2"],
        },
        **osx.CLIENT_PROPERTIES,
    },
}

EXAMPLES = [
    """- id: orphan
  if: steps.record.status == 'failed' and steps.upload.status == 'changed'
  uses: s3-remove
  with:
    urls: "{{ steps.upload.outputs.urls }}"
    endpoint_url: "{{ settings.s3_endpoint }}"
"""
]

OUTPUTS = {
    "removed": "URLs of the objects deleted (in a dry run: that would be deleted)",
    "absent": "URLs that named no object",
}


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    urls = params["urls"]
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls:
        return Plan(outputs={"removed": [], "absent": []})
    store = osx.open_store(urls[0], params, ctx)
    present: list[tuple[str, str, int]] = []
    absent: list[str] = []
    for url in urls:
        if osx.split_url(url)[0] != store.protocol:
            raise StepError(f"every URL must use {store.protocol}://", path=url)
        path = store.path(url)
        if store.is_s3 and "/" not in path:
            raise StepError("names a bucket, not an object", path=url)
        try:
            found = osx.list_objects(store, path).get(path)
        except Exception as e:
            raise store.error(e, url) from None
        if found is None:
            absent.append(url)
        else:
            present.append((url, path, found.size))
    effects: list[Effect] = [remove(url, bytes=size) for url, _, size in present]
    outputs = {"removed": [url for url, _, _ in present], "absent": absent}
    return Plan(effects=effects, outputs=outputs, data=(store, present))


def apply(plan: Plan, ctx: StepContext) -> Result:
    store, present = plan.data if plan.data else (None, [])
    for url, path, _ in present:
        try:
            if store.is_s3:
                bucket, key = osx.bucket_key(path)
                store.call("delete_object", Bucket=bucket, Key=key)
            else:
                store.fs.rm(path)
        except Exception as e:
            raise store.error(e, url) from None
    return Result(effects=list(plan.effects), outputs=plan.outputs)
