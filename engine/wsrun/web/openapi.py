"""The OpenAPI document of the JSON API: Starlette's schema from the endpoints'
docstrings (summary and the status codes each endpoint answers), completed
here with what the docstrings would repeat everywhere: path parameters (from
the route), query parameters and request bodies (one table, next to each
other so they stay consistent), the JSON error body of every 4xx/5xx, 400 for
a malformed request and 401 when the server has a token. ``tests/test_web_api.py``
runs schemathesis against a live ``wsrun serve`` with this document.
"""

from __future__ import annotations

import re
from typing import Any

from wsrun.web.common import MAX_PAGE_SIZE
from wsrun.web.messages import STATUSES
from wsrun.web.pictures import FORMATS
from wsrun.web.review import FLAGS

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}
_JSON = "application/json"
_PATH_PARAM = re.compile(r"{([^}:]+)(?::[^}]+)?}")


def _query(name: str, schema: dict[str, Any], about: str, required: bool = False) -> dict:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": about,
        "schema": schema,
    }


PAGING = [
    _query("page", {"type": "integer", "minimum": 1, "maximum": 1_000_000}, "Page, from 1"),
    _query("size", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE}, "Rows a page"),
    _query("q", {"type": "string"}, "Only rows containing this text"),
]
FORMAT = _query("format", {"type": "string", "enum": list(FORMATS)}, "Picture format")
ID = _query("id", {"type": "string", "minLength": 1}, "The entity's id", required=True)

#: Query parameters by (method, path).
QUERY: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("get", "/api/runs"): PAGING,
    ("get", "/api/board"): [_query("kind", {"type": "string"}, "Entity kind of the board")],
    ("get", "/api/board/tables/{name}"): PAGING,
    ("get", "/api/entities/{kind}"): [ID],
    ("get", "/api/review/ous"): [{**ID, "description": "The OUS's id"}],
    ("get", "/api/messages"): [
        _query("status", {"type": "string", "enum": list(STATUSES)}, "Only this status"),
        _query("queue", {"type": "string"}, "Only this queue"),
        *PAGING,
    ],
    ("get", "/api/pictures/lifecycle/{kind}"): [FORMAT],
    ("get", "/api/pictures/recipe/{name}"): [FORMAT],
}


def _object(required: list[str], **properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


#: JSON request bodies by (method, path).
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/api/review/open"): _object(["id"], id={"type": "string", "minLength": 1}),
    ("post", "/api/review/decide"): _object(
        ["id", "flag"],
        id={"type": "string", "minLength": 1},
        flag={"type": "string", "enum": list(FLAGS)},
    ),
    ("post", "/api/distillery"): {
        **_object(
            ["collection"],
            collection={"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
            preservation={"type": "boolean"},
            access={"type": "boolean"},
        ),
        # preservation, access or both
        "anyOf": [
            {"required": [flag], "properties": {flag: {"enum": [True]}}}
            for flag in ("preservation", "access")
        ],
    },
}


def complete(schema: dict[str, Any], token: bool) -> dict[str, Any]:
    """``schema`` with parameters, bodies, error bodies and (with a token) security."""
    schema.setdefault("components", {})["schemas"] = {"Error": ERROR}
    error = {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}
    if token:
        schema["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "header": {"type": "apiKey", "in": "header", "name": "X-Wsrun-Token"},
        }
        schema["security"] = [{"bearer": []}, {"header": []}]
    for path, operations in schema.get("paths", {}).items():
        for method, op in operations.items():
            params = [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in _PATH_PARAM.findall(path)
            ]
            params += QUERY.get((method, path), [])
            if params:
                op["parameters"] = params
            body = BODIES.get((method, path))
            if body is not None:
                op["requestBody"] = {"required": True, "content": {_JSON: {"schema": body}}}
            responses = op.setdefault("responses", {})
            if params or body is not None:
                responses.setdefault("400", {"description": "A malformed parameter or body"})
            if token:
                responses.setdefault("401", {"description": "No or a wrong token"})
            for status, response in responses.items():
                if str(status)[0] in "45":
                    response["content"] = error
    return schema
