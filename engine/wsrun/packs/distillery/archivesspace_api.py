"""A small client for the ArchivesSpace backend REST API (the endpoints the archive steps use).

Why not ArchivesSnake: it pulls in a code formatter (autopep8), a parser
generator and structlog at run time for what is, here, seven endpoints; this
client is a thin layer over httpx with the same session handling: ``POST
/users/:user/login`` gives a session token, sent as ``X-ArchivesSpace-Session``
on every later request, and a request answered 412/403 because the session
expired logs in again once. Tokens are cached per (URL, user) for the life of
the process, so a recipe's many steps log in once. The password is never part
of an error message.

Endpoints (relative to the API URL, e.g. ``http://aspace:8089``):
``/repositories/:repo/find_by_id/resources?identifier[]=["MS01"]``,
``/repositories/:repo/resources/:id`` and its ``/tree/root``, ``/tree/node``
and ``/tree/waypoint``, ``/repositories/:repo/archival_objects/:id``,
``/repositories/:repo/find_by_id/digital_objects?digital_object_id[]=ID``,
``/repositories/:repo/digital_objects[/:id]``,
``/repositories/:repo/find_by_id/digital_object_components?component_id[]=ID``,
``/repositories/:repo/digital_object_components[/:id]``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

SESSION_HEADER = "X-ArchivesSpace-Session"
_tokens: dict[tuple[str, str, str], str] = {}
_transports: dict[str, Any] = {}
_transports_lock = threading.Lock()


def _transport(url: str) -> Any:
    """One httpx transport (connection pool and SSL context) per API URL for the
    process: building one loads the CA bundle (0.1-0.15 s), and a recipe has a
    dozen archivesspace steps. Thread-safe. Each ``ArchivesSpace`` wraps it in a
    client of its own, so no cookie or header passes from one user to another;
    the transport holds no credentials."""
    import httpx

    with _transports_lock:
        transport = _transports.get(url)
        if transport is None:
            transport = _transports[url] = httpx.HTTPTransport()
        return transport


class ArchivesSpaceError(Exception):
    """The API refused or failed a request; the message names it without secrets.
    ``transient``: the service was unreachable or busy (5xx, 429), worth a retry."""

    def __init__(
        self, message: str, transient: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.transient = transient
        self.retry_after = retry_after


class ArchivesSpace:
    """One user's session with one ArchivesSpace API."""

    def __init__(self, url: str, username: str, password: str, timeout: float = 30.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.username = username
        self._password = password
        self._key = (self.url, username, hashlib.sha256(password.encode()).hexdigest())
        self._client = httpx.Client(
            base_url=self.url, timeout=timeout, transport=_transport(self.url)
        )

    def close(self) -> None:
        """Nothing to release: the connections are shared by the process (``_transport``)."""

    def __enter__(self) -> ArchivesSpace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- session --

    def login(self) -> str:
        """Log in and return the session token."""
        import httpx

        try:
            response = self._client.post(
                f"/users/{self.username}/login",
                data={"password": self._password},
            )
        except httpx.HTTPError as e:
            raise ArchivesSpaceError(
                f"cannot reach ArchivesSpace at {self.url}: {e}", transient=True
            ) from None
        if response.status_code != 200:
            busy = response.status_code >= 500 or response.status_code == 429
            raise ArchivesSpaceError(
                f"ArchivesSpace login failed for user '{self.username}' at {self.url} "
                f"(status {response.status_code}): "
                + ("the service is unavailable" if busy else "check the user name and password"),
                transient=busy,
            )
        token = str(response.json()["session"])
        _tokens[self._key] = token
        return token

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API call; the parsed JSON answer. Logs in when needed."""
        import httpx

        for attempt in range(2):
            token = _tokens.get(self._key) or self.login()
            try:
                response = self._client.request(
                    method, path, headers={SESSION_HEADER: token}, **kwargs
                )
            except httpx.HTTPError as e:
                raise ArchivesSpaceError(f"{method} {path}: {e}", transient=True) from None
            if response.status_code in (403, 412) and attempt == 0:
                _tokens.pop(self._key, None)  # the session expired: log in again
                continue
            if response.status_code >= 400:
                from wsrun.steps.http import retry_after

                status = response.status_code
                raise ArchivesSpaceError(
                    f"{method} {path}: status {status}: {_error(response)}",
                    transient=status >= 500 or status == 429,
                    retry_after=retry_after(response.headers.get("retry-after")),
                )
            return response.json()
        raise AssertionError("unreachable")

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None)

    def post(self, path: str, record: dict[str, Any]) -> Any:
        return self.request("POST", path, json=record)

    # -- records --

    def find_resource(self, repository: int, identifier: str) -> dict[str, Any] | None:
        """The resource whose four-part identifier's first part (or all parts, joined by
        '.' or given as a list) is ``identifier``, or None."""
        parts = identifier.split(".") if "." in identifier else [identifier]
        found = self.get(
            f"/repositories/{repository}/find_by_id/resources",
            **{"identifier[]": json.dumps(parts)},
        )
        refs = found.get("resources", [])
        return self.get(refs[0]["ref"]) if refs else None

    def find_digital_object(self, repository: int, digital_object_id: str) -> dict | None:
        found = self.get(
            f"/repositories/{repository}/find_by_id/digital_objects",
            **{"digital_object_id[]": digital_object_id},
        )
        refs = found.get("digital_objects", [])
        return self.get(refs[0]["ref"]) if refs else None

    def find_component(self, repository: int, component_id: str) -> dict | None:
        found = self.get(
            f"/repositories/{repository}/find_by_id/digital_object_components",
            **{"component_id[]": component_id},
        )
        refs = found.get("digital_object_components", [])
        return self.get(refs[0]["ref"]) if refs else None

    def tree(self, resource_uri: str) -> list[dict[str, Any]]:
        """Every archival object below a resource, in tree order: each tree node
        ({uri, title, level, child_count, ...}) with ``ancestors`` (the uris above it)."""
        out: list[dict[str, Any]] = []
        root = self.get(f"{resource_uri}/tree/root")
        self._children(resource_uri, root, "", [], out)
        return out

    def _children(
        self,
        resource_uri: str,
        node: dict[str, Any],
        parent: str,
        ancestors: list[str],
        out: list[dict[str, Any]],
    ) -> None:
        waypoints = node.get("precomputed_waypoints", {}).get(parent, {})
        for offset in range(int(node.get("waypoints", 0) or 0)):
            children = waypoints.get(str(offset))
            if children is None:
                params = {"offset": offset, **({"parent_node": parent} if parent else {})}
                children = self.get(f"{resource_uri}/tree/waypoint", **params)
            for child in children:
                out.append({**child, "ancestors": ancestors})
                if child.get("child_count"):
                    below = self.get(f"{resource_uri}/tree/node", node_uri=child["uri"])
                    self._children(
                        resource_uri, below, child["uri"], [*ancestors, child["uri"]], out
                    )


def _error(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return " ".join(response.text.split())[:200]
    if isinstance(body, dict) and "error" in body:
        return json.dumps(body["error"])[:300]
    return json.dumps(body)[:300]
