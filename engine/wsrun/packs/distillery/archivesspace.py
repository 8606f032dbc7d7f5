"""The ``archivesspace`` step type: read a collection, record digital objects.

One piece: its operations (read a collection, find or create digital objects and
components, add file versions) share the plan/apply bookkeeping of what exists and
what will be created, which the dry run needs in one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from wsrun.core.effects import Effect
from wsrun.core.fs import WorldView
from wsrun.core.settings import MASK
from wsrun.core.step import Plan, Result, StepContext, StepError
from wsrun.packs.distillery.archivesspace_api import ArchivesSpace, ArchivesSpaceError

NAME = "archivesspace"
DOC = """Read a collection from ArchivesSpace and record digital objects in it.

``action`` chooses what to do:

- ``resource``: find the resource (collection) by its identifier and walk its
  tree; outputs the resource and every archival object in tree order with its
  title, component id, level, dates, ancestors and linked digital objects.
- ``archival-object``: read one archival object by URI.
- ``find-digital-object``: read the digital object with this
  ``digital_object_id`` (its URI, title and file versions), or null.
- ``digital-object``: make sure a digital object with this ``digital_object_id``
  exists with this title and these file versions, linked to ``archival_object``
  when given; an existing one is updated (``file_versions_mode: merge`` adds or
  replaces versions by ``file_uri`` and keeps the others), never duplicated.
- ``digital-object-component``: the same for a component of a digital object
  (found by ``component_id``).

Reading is done while planning, dry runs included (so later steps see real
titles); every change is a ``record`` effect naming the records' collection
(``/repositories/2/digital_objects``) and the record's id (a link names the
archival object), made only by a real run; the record's URI is the ``uri``
output. A dry run sees the records earlier steps of the same run would create
or update, so it plans what the real run does. A second run with the same
values finds nothing to change. Log in
with ``username`` and ``password``; give the password from a secret setting
(``password: "{{ settings.aspace_password }}"``): it never appears in effects,
outputs, logs or errors. Talks to the backend API (port 8089 by default).
"""

_FILE_VERSION: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["file_uri"],
    "properties": {
        "file_uri": {"type": "string", "minLength": 1, "description": "Where the file is."},
        "use_statement": {"type": "string", "description": "e.g. master, image-service"},
        "checksum": {"type": "string"},
        "checksum_method": {"type": "string", "description": "e.g. md5, sha-256"},
        "file_size_bytes": {"type": "integer", "minimum": 0},
        "file_format_name": {"type": "string", "description": "e.g. JPEG 2000"},
        "publish": {"type": "boolean"},
        "caption": {"type": "string"},
    },
}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["action", "url", "username", "password"],
    "properties": {
        "action": {
            "description": "What to do (see the step's description).",
            "enum": [
                "resource",
                "archival-object",
                "find-digital-object",
                "digital-object",
                "digital-object-component",
            ],
        },
        "url": {
            "description": "The backend API's URL.",
            "type": "string",
            "minLength": 1,
            "examples": ["http://aspace.example.edu:8089"],
        },
        "username": {"description": "The user to log in as.", "type": "string", "minLength": 1},
        "password": {
            "description": "Its password; pass it from a secret setting.",
            "type": "string",
            "examples": ["{{ settings.aspace_password }}"],
        },
        "repository": {
            "description": "The repository's number.",
            "type": "integer",
            "minimum": 1,
            "default": 2,
        },
        "identifier": {
            "description": "resource: the collection's identifier (parts joined by '.').",
            "type": "string",
            "minLength": 1,
            "examples": ["MS01"],
        },
        "uri": {
            "description": "archival-object: its URI.",
            "type": "string",
            "examples": ["/repositories/2/archival_objects/1234"],
        },
        "digital_object_id": {
            "description": "digital-object, find-digital-object: the identifier that makes "
            "it unique.",
            "type": "string",
            "minLength": 1,
            "examples": ["MS01_001_0001"],
        },
        "digital_object": {
            "description": "digital-object-component: the digital object it belongs to, by URI "
            "or by digital_object_id.",
            "type": "string",
            "minLength": 1,
        },
        "component_id": {
            "description": "digital-object-component: the identifier that makes it unique.",
            "type": "string",
            "minLength": 1,
        },
        "title": {"description": "The record's title.", "type": "string", "minLength": 1},
        "file_versions": {
            "description": "The record's file versions; left as they are when not given.",
            "type": "array",
            "items": _FILE_VERSION,
            "examples": [
                [
                    {
                        "file_uri": "s3://archives/MS01/series/folder/0001.jp2",
                        "use_statement": "master",
                        "checksum": "9e107d9d372bb6826bd81d3542a419d6",
                        "checksum_method": "md5",
                    }
                ]
            ],
        },
        "file_versions_mode": {
            "description": "replace: the record holds exactly `file_versions`; merge: add or "
            "replace these (by file_uri) and keep the others.",
            "enum": ["replace", "merge"],
            "default": "replace",
        },
        "archival_object": {
            "description": "digital-object: the archival object (URI) to link it to.",
            "type": "string",
        },
        "publish": {"description": "Publish the record.", "type": "boolean"},
        "timeout": {
            "description": "Seconds to wait for each API call.",
            "type": "number",
            "exclusiveMinimum": 0,
            "default": 30,
        },
    },
}

EXAMPLES = [
    """- id: collection
  uses: archivesspace
  with:
    action: resource
    url: "{{ settings.aspace_url }}"
    username: "{{ settings.aspace_user }}"
    password: "{{ settings.aspace_password }}"
    identifier: "{{ inputs.collection }}"
""",
    """- id: record
  uses: archivesspace
  with:
    action: digital-object
    url: "{{ settings.aspace_url }}"
    username: "{{ settings.aspace_user }}"
    password: "{{ settings.aspace_password }}"
    digital_object_id: "{{ vars.folder.component_id }}"
    title: "{{ vars.folder.title }}"
    archival_object: "{{ vars.folder.uri }}"
    file_versions:
      - {file_uri: "{{ vars.access_url }}", use_statement: image-service, publish: true}
    file_versions_mode: merge
""",
]

OUTPUTS = {
    "resource": "resource: {uri, title, identifier}",
    "archival_objects": "resource: every archival object in tree order, each {uri, title, "
    "display_string, component_id, level, ref_id, dates, ancestors (URIs), path ([{uri, title, "
    "level, component_id}] from the top), digital_objects (linked URIs)}",
    "archival_object": "archival-object: the archival object, in the same form",
    "digital_object": "find-digital-object: {uri, digital_object_id, title, file_versions} "
    "or null (in a dry run as earlier steps of the run would leave it; uri null when it is "
    "still to create)",
    "uri": "digital-object and -component: the record's URI (null in a dry run of one to create)",
    "change": "digital-object and -component: created, updated or unchanged",
}

_RECORDS = {
    "digital-object": ("digital_objects", "digital_object", "digital_object_id"),
    "digital-object-component": (
        "digital_object_components",
        "digital_object_component",
        "component_id",
    ),
}


@dataclass
class _Write:
    client_args: tuple[str, str, float] = field(repr=False)
    password: str = field(repr=False)
    path: str = ""  # where to POST
    record: dict[str, Any] = field(default_factory=dict)
    link: str | None = None  # archival object to link the digital object to
    outputs: dict[str, Any] = field(default_factory=dict)
    parent_id: str | None = None  # a component's digital object, by id, to look up at apply


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    action = params["action"]
    client = _client(params)
    try:
        with client:
            if action == "resource":
                return Plan(outputs=_resource(client, params))
            if action == "archival-object":
                if not params.get("uri"):
                    raise StepError("archival-object needs `uri`")
                return Plan(outputs={"archival_object": _archival_object(client, params["uri"])})
            if action == "find-digital-object":
                return Plan(outputs={"digital_object": _find_digital_object(client, params, ctx)})
            return _plan_write(client, params, action, ctx.fs)
    except ArchivesSpaceError as e:
        raise StepError(
            _masked(str(e), params["password"]), transient=e.transient, retry_after=e.retry_after
        ) from None


def apply(plan: Plan, ctx: StepContext) -> Result:
    if not plan.effects:
        return Result(outputs=plan.outputs)
    w: _Write = plan.data
    url, username, timeout = w.client_args
    try:
        with ArchivesSpace(url, username, w.password, timeout) as client:
            uri = w.outputs["uri"]
            if w.record:
                record = dict(w.record)
                if w.parent_id is not None:
                    parent = client.find_digital_object(_repo(w.path), w.parent_id)
                    if parent is None:
                        raise StepError(f"no digital object '{w.parent_id}'")
                    record["digital_object"] = {"ref": parent["uri"]}
                uri = client.post(w.path, record).get("uri") or w.path
            if w.link:
                _link(client, w.link, uri)
    except ArchivesSpaceError as e:
        raise StepError(
            _masked(str(e), w.password), transient=e.transient, retry_after=e.retry_after
        ) from None
    return Result(effects=plan.effects, outputs={**w.outputs, "uri": uri})


def _client(params: dict[str, Any]) -> ArchivesSpace:
    return ArchivesSpace(
        params["url"], params["username"], params["password"], float(params.get("timeout", 30))
    )


def _masked(message: str, password: str) -> str:
    return message.replace(password, MASK) if len(password) >= 4 else message


def _repo(path: str) -> int:
    return int(path.split("/")[2])


def _resource(client: ArchivesSpace, params: dict[str, Any]) -> dict[str, Any]:
    identifier = params.get("identifier")
    if not identifier:
        raise StepError("resource needs `identifier`")
    repository = params.get("repository", 2)
    resource = client.find_resource(repository, identifier)
    if resource is None:
        raise StepError(
            f"no resource with identifier '{identifier}' in repository {repository} at {client.url}"
        )
    nodes = client.tree(resource["uri"])
    by_uri: dict[str, dict[str, Any]] = {}
    objects = []
    for node in nodes:
        record = client.get(node["uri"])
        item = _describe(record, node["ancestors"])
        item["path"] = [
            {k: by_uri[a][k] for k in ("uri", "title", "level", "component_id")}
            for a in node["ancestors"]
        ]
        by_uri[item["uri"]] = item
        objects.append(item)
    parts = [resource.get(f"id_{i}") for i in range(4)]
    return {
        "resource": {
            "uri": resource["uri"],
            "title": resource.get("title"),
            "identifier": ".".join(p for p in parts if p),
        },
        "archival_objects": objects,
    }


def _find_digital_object(
    client: ArchivesSpace, params: dict[str, Any], ctx: StepContext
) -> dict[str, Any] | None:
    record_id = params.get("digital_object_id")
    if not record_id:
        raise StepError("find-digital-object needs `digital_object_id`")
    repository = params.get("repository", 2)
    record = client.find_digital_object(repository, record_id) or _planned_record(
        ctx.fs,
        client.url,
        f"/repositories/{repository}/digital_objects",
        "digital_object_id",
        record_id,
    )
    if record is None:
        return None
    return {
        "uri": record.get("uri"),
        "digital_object_id": record_id,
        "title": record.get("title"),
        "file_versions": [
            {k: v for k, v in version.items() if k not in ("jsonmodel_type", "lock_version")}
            for version in record.get("file_versions", [])
        ],
    }


def _archival_object(client: ArchivesSpace, uri: str) -> dict[str, Any]:
    record = client.get(uri)
    ancestors = [
        a["ref"] for a in reversed(record.get("ancestors", [])) if "archival_objects" in a["ref"]
    ]
    item = _describe(record, ancestors)
    item["path"] = []
    for a in ancestors:
        parent = client.get(a)
        item["path"].append(
            {
                "uri": a,
                "title": parent.get("title"),
                "level": parent.get("level"),
                "component_id": parent.get("component_id"),
            }
        )
    return item


def _describe(record: dict[str, Any], ancestors: list[str]) -> dict[str, Any]:
    return {
        "uri": record["uri"],
        "title": record.get("title"),
        "display_string": record.get("display_string") or record.get("title"),
        "component_id": record.get("component_id"),
        "level": record.get("level"),
        "ref_id": record.get("ref_id"),
        "dates": [
            {k: d.get(k) for k in ("expression", "begin", "end", "date_type", "label") if k in d}
            for d in record.get("dates", [])
        ],
        "ancestors": ancestors,
        "digital_objects": [
            i["digital_object"]["ref"]
            for i in record.get("instances", [])
            if i.get("instance_type") == "digital_object" and "digital_object" in i
        ],
    }


def _planned_record(
    fs: WorldView, url: str, collection_path: str, id_field: str, record_id: str
) -> dict[str, Any] | None:
    """The record an earlier step of this dry run would have written (created or
    updated), as it would then be; None when no earlier step writes it. A real
    run has no planned effects: the store itself answers."""
    found = None
    for effect in fs.planned_other:
        if (
            effect.op == "record"
            and effect.path == collection_path
            and effect.extra.get(id_field) == record_id
            and effect.content is not None
        ):
            written = json.loads(effect.content)
            if written["url"] == url:
                found = written["record"]
    return found


def _planned_link(fs: WorldView, archival_object: str, digital_object_id: str) -> bool:
    """Whether an earlier step of this dry run links the digital object to the archival object."""
    return any(
        e.op == "record"
        and e.path == archival_object
        and e.extra.get("action") == "link"
        and e.extra.get("digital_object_id") == digital_object_id
        for e in fs.planned_other
    )


def _plan_write(client: ArchivesSpace, params: dict[str, Any], action: str, fs: WorldView) -> Plan:
    collection, jsonmodel, id_field = _RECORDS[action]
    repository = params.get("repository", 2)
    record_id = params.get(id_field)
    if not record_id:
        raise StepError(f"{action} needs `{id_field}`")
    if not params.get("title"):
        raise StepError(f"{action} needs `title`")
    wanted: dict[str, Any] = {"title": params["title"]}
    if "publish" in params:
        wanted["publish"] = params["publish"]
    parent_id = None
    if action == "digital-object-component":
        parent = params.get("digital_object")
        if not parent:
            raise StepError("digital-object-component needs `digital_object`")
        if parent.startswith("/repositories/"):
            wanted["digital_object"] = {"ref": parent}
        else:
            found = client.find_digital_object(repository, parent) or _planned_record(
                fs,
                client.url,
                f"/repositories/{repository}/digital_objects",
                "digital_object_id",
                parent,
            )
            if found is not None and found.get("uri"):
                wanted["digital_object"] = {"ref": found["uri"]}
            else:
                parent_id = parent  # planned by an earlier step of this dry run
    # Effects name the collection and the record's id, not its URI: a record an
    # earlier step of the same run creates has no URI yet in a dry run.
    collection_path = f"/repositories/{repository}/{collection}"
    existing = (
        client.find_digital_object(repository, record_id)
        if action == "digital-object"
        else client.find_component(repository, record_id)
    ) or _planned_record(fs, client.url, collection_path, id_field, record_id)
    versions = [dict(v, jsonmodel_type="file_version") for v in params.get("file_versions", [])]
    # Without `file_versions` an existing record keeps the versions it has.
    mode = params.get("file_versions_mode", "replace" if "file_versions" in params else "merge")
    link = params.get("archival_object")
    effects: list[Effect] = []
    data = _Write(
        (params["url"], params["username"], float(params.get("timeout", 30))),
        params["password"],
        parent_id=parent_id,
    )
    if existing is None:
        record = {
            "jsonmodel_type": jsonmodel,
            id_field: record_id,
            **wanted,
            "file_versions": versions,
        }
        data.path = collection_path
        data.record = record
        effects.append(_write_effect(client.url, collection_path, "create", id_field, record))
        change, uri = "created", None
    else:
        uri = existing.get("uri")  # None: planned by an earlier step of this dry run
        merged = _merged(existing.get("file_versions", []), versions, mode)
        differs = any(existing.get(k) != v for k, v in wanted.items()) or not _same_versions(
            existing.get("file_versions", []), merged
        )
        change = "unchanged"
        if differs:
            data.path = uri or collection_path
            data.record = {**existing, **wanted, "file_versions": merged}
            effects.append(
                _write_effect(client.url, collection_path, "update", id_field, data.record)
            )
            change = "updated"
    if link:
        if action != "digital-object":
            raise StepError("only a digital object is linked to an archival object")
        linked = _planned_link(fs, link, record_id) or (
            uri is not None and uri in _describe(client.get(link), [])["digital_objects"]
        )
        if not linked:
            data.link = link
            effects.append(Effect("record", link, extra={"action": "link", id_field: record_id}))
    data.outputs = {"uri": uri, "change": change}
    return Plan(effects=effects, outputs=dict(data.outputs), data=data)


def _write_effect(
    url: str, collection_path: str, action: str, id_field: str, record: dict[str, Any]
) -> Effect:
    """A ``record`` effect creating or updating a record; it carries the record as
    it will be (never printed) so later steps of a dry run see it."""
    return Effect(
        "record",
        collection_path,
        extra={"action": action, id_field: record[id_field]},
        content=json.dumps({"url": url, "record": record}).encode(),
    )


def _merged(
    existing: list[dict[str, Any]], wanted: list[dict[str, Any]], mode: str
) -> list[dict[str, Any]]:
    """The file versions the record should hold."""
    if mode == "replace":
        return wanted
    by_uri = {v["file_uri"]: v for v in wanted}
    kept = [by_uri.pop(v.get("file_uri"), v) for v in existing]
    return kept + [v for v in wanted if v["file_uri"] in by_uri]


def _same_versions(existing: list[dict[str, Any]], wanted: list[dict[str, Any]]) -> bool:
    """Whether the record's versions are the wanted ones (fields ArchivesSpace adds ignored)."""
    if len(existing) != len(wanted):
        return False
    return all(
        all(have.get(k) == v for k, v in want.items())
        for have, want in zip(existing, wanted, strict=True)
    )


def _link(client: ArchivesSpace, archival_object: str, digital_object: str) -> None:
    """Add a digital-object instance to the archival object (read fresh: lock_version)."""
    record = client.get(archival_object)
    if digital_object in _describe(record, [])["digital_objects"]:
        return
    instance = {
        "jsonmodel_type": "instance",
        "instance_type": "digital_object",
        "digital_object": {"ref": digital_object},
    }
    record["instances"] = [*record.get("instances", []), instance]
    client.post(archival_object, record)
