"""``wsrun serve``: the web dashboard over the journal, state store, bus and archive.

``create_app(WebConfig(...))`` builds the ASGI application; each page is a
module here (``runs``, ``board``, ``review``, ``files``, ``distillery``,
``messages``, ``pictures``) with its HTML routes and the JSON API under
``/api/`` that backs them. Templates and static files (htmx, vendored) ship
inside the package. See docs/web.md.
"""
