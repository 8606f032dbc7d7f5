"""What a run may show of its data: secrets masked, bytes that are not UTF-8 escaped.

Every place a run's data leaves the process goes through here: printed lines,
``--json``, and the journal (which ``wsrun runs`` and the web pages read), so
the journal never holds a secret. As in GitHub Actions, a secret is masked by
value wherever it appears, inside paths, URLs and error messages too, in the
forms a run obviously derives from it (percent-encoded, JSON-escaped).

A file name that is not UTF-8 reaches Python as a string with surrogate
escapes (``os.fsdecode``); such a string cannot be written as UTF-8 text, so it
is shown with each undecodable byte as ``\\xNN`` (backslash, x, two hex digits),
and an effect's ``path``, ``source`` and ``target`` then also come as
``path_base64`` (...) with the exact bytes.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Sequence
from typing import Any, TextIO
from urllib.parse import quote, quote_plus, unquote

from wsrun.core.spool import Mapped, MappedDict, is_lazy, lazy_mapping

#: What a secret is replaced by.
MASK = "***"
#: Shorter values are not masked: masking "1" or "ab" would garble every line.
MIN_LENGTH = 4
#: Effect fields that name files, given again in base64 when they are not UTF-8.
PATH_FIELDS = ("path", "source", "target")


class Masker:
    """The secret values one run knows of, and their masking."""

    def __init__(self) -> None:
        self._forms: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def __bool__(self) -> bool:
        return bool(self._forms)

    def add(self, value: Any) -> None:
        """Mask ``value`` (and its percent-encoded, JSON-escaped and repr forms) from now on."""
        if value is None or isinstance(value, bool):
            return
        text = str(value)
        if len(text) < MIN_LENGTH:
            return
        forms = {
            text,
            quote(text, safe=""),
            quote(text),
            quote_plus(text),
            json.dumps(text)[1:-1],
            json.dumps(text, ensure_ascii=False)[1:-1],
            repr(text)[1:-1],  # inside a printed list or dict
        }
        new = forms - self._forms
        if new:
            self._forms |= new
            self._pattern = None

    def add_url_passwords(self, value: Any) -> None:
        """Mask the password of every URL in ``value`` (scheme://user:password@host)."""
        if isinstance(value, str):
            for password in URL_PASSWORD.findall(value):
                self.add(password)
                self.add(unquote(password))

    def pattern(self) -> re.Pattern[str] | None:
        """One expression matching every form of every secret, longest first."""
        if self._pattern is None and self._forms:
            ordered = sorted(self._forms, key=len, reverse=True)
            self._pattern = re.compile("|".join(map(re.escape, ordered)))
        return self._pattern

    def text(self, text: str) -> str:
        """``text`` with every secret replaced by MASK."""
        pattern = self.pattern()
        return pattern.sub(MASK, text) if pattern is not None and text else text

    def clean(self, value: Any) -> Any:
        """``value`` (JSON-like data) with secrets masked and every string printable."""
        if isinstance(value, str):
            if not self._forms and value.isascii():
                return value  # no secret to mask, no byte to escape: the common case
            return printable(self.text(value))
        if value is None or isinstance(value, (int, float)):
            return value  # before the lazy checks below, which cost more (a million nulls)
        if isinstance(value, dict):
            return {self.clean(k): self.clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.clean(v) for v in value]
        if lazy_mapping(value):  # a spooled output (a million checksums): cleaned as read
            return MappedDict(value, self.clean)
        if is_lazy(value):  # a spooled output (a million file names): cleaned as read
            return Mapped(value, self.clean)
        return value

    def effects(self, effects: Sequence[dict[str, Any]]) -> Sequence[dict[str, Any]]:
        """Effects as they are shown and journaled: cleaned, and a path field that is
        not UTF-8 also given in base64 (of its bytes, secrets masked). An effect with
        nothing to clean is passed on as it is (a dry run may plan 100,000). A lazy
        sequence (a spooled plan, wsrun.core.spool) stays lazy: each effect is masked as
        it is read, so a million effects are never held at once."""
        pattern = self.pattern()
        if is_lazy(effects):
            return Mapped(effects, lambda effect: self._effect(effect, pattern))
        return [self._effect(effect, pattern) for effect in effects]

    def _effect(self, effect: dict[str, Any], pattern: re.Pattern[str] | None) -> dict[str, Any]:
        if _clean_already(effect, pattern):
            return effect
        shown = self.clean(effect)
        for name in PATH_FIELDS:
            value = effect.get(name)
            if isinstance(value, str) and not _is_utf8(value):
                raw = os.fsencode(self.text(value))
                shown[f"{name}_base64"] = base64.b64encode(raw).decode("ascii")
        return shown  # type: ignore[no-any-return]


def _clean_already(effect: dict[str, Any], pattern: re.Pattern[str] | None) -> bool:
    for value in effect.values():
        if isinstance(value, str):
            if not value.isascii() and not _is_utf8(value):
                return False
            if pattern is not None and pattern.search(value):
                return False
        elif not isinstance(value, (int, float, type(None))):
            return False  # lists and dicts (a command's argv): cleaned in full
    return True


#: The password of a URL (scheme://user:password@host).
URL_PASSWORD = re.compile(r"://[^/\s:@]*:([^/\s@]+)@")


def _is_utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """``text`` with each byte that is not UTF-8 (a surrogate escape) as ``\\xNN``."""
    if _is_utf8(text):
        return text
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def printable_data(value: Any) -> Any:
    """``value`` (JSON-like data) with every string printable; for data that holds
    no secret, such as a journal's inputs, which keep a path's exact bytes."""
    return Masker().clean(value)


class MaskedStream:
    """A text stream that masks secrets and escapes undecodable bytes in all it writes."""

    def __init__(self, stream: TextIO, masker: Masker) -> None:
        self.stream = stream
        self.masker = masker

    def write(self, text: str) -> int:
        return self.stream.write(printable(self.masker.text(text)))

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, ...
        return getattr(self.stream, name)
