"""The stores the pages read, opened on first use and kept for the app's life.

A store that cannot be opened (its module is not installed, its URL is
unreachable, the archive does not exist yet) makes the pages that need it say
so, instead of failing every page.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from wsrun.core.journal import Journal
from wsrun.web.config import WebConfig


class Unavailable(Exception):
    """A store the page needs cannot be opened; the message says why."""


class Sources:
    """Lazily opened journal, state store, bus and archive of one app."""

    def __init__(self, config: WebConfig) -> None:
        self.config = config
        self._journal: Journal | None = None
        self._state: Any = None
        self._bus: Any = None
        #: Files of archived products by locator (a product's files never change).
        self._files: dict[tuple[str, str], list[Any]] = {}

    @property
    def journal(self) -> Journal:
        if self._journal is None:
            try:
                self._journal = Journal(self.config.home)
            except ValueError as e:  # JournalError: unreachable, schema behind
                raise Unavailable(str(e)) from None
        return self._journal

    @property
    def state(self) -> Any:
        """The state store (``wsrun.stores.state``)."""
        if self._state is None:
            try:
                from wsrun.stores.state import open_state_store
            except ImportError as e:
                raise Unavailable(f"the state store is not installed ({e})") from None
            try:
                self._state = open_state_store()
            except Exception as e:  # any backend's connection error
                raise Unavailable(f"cannot open the state store: {e}") from None
        return self._state

    @property
    def bus(self) -> Any:
        """The message bus (``wsrun.stores.bus``)."""
        if self._bus is None:
            try:
                from wsrun.stores.bus import open_bus
            except ImportError as e:
                raise Unavailable(f"the message bus is not installed ({e})") from None
            try:
                self._bus = open_bus()
            except Exception as e:  # any backend's connection error
                raise Unavailable(f"cannot open the message bus: {e}") from None
        return self._bus

    @contextlib.contextmanager
    def archive(self) -> Iterator[Any]:
        """The archive, opened read-only per use (it may be created while the app runs)."""
        from wsrun.stores.archive.store import ArchiveError, ArchiveStore, archive_url

        try:
            store = ArchiveStore.open(archive_url(), create=False)
        except ArchiveError as e:
            raise Unavailable(str(e)) from None
        try:
            yield store
        finally:
            store.close()

    def product_files(self, archive: Any, locator: str) -> list[Any]:
        """A product's stored files, read once per product and remembered, so
        the archive table's live updates cost one query, not one per product."""
        key = (archive.url, locator)
        if key not in self._files:
            record = archive.product(locator)
            self._files[key] = record.files if record else []
        return self._files[key]

    def close(self) -> None:
        for store in (self._journal, self._state, self._bus):
            close = getattr(store, "close", None)
            if close is not None:
                close()
