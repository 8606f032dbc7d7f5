"""Settings: named configuration values, resolved as NRAO's Capo resolves them.

A setting has a dotted name (``edu.nrao.workspaces.DeliverySettings.downloadDirectory``).
Values come, later winning, from:

1. profile properties files: the profile is ``--profile``, else ``CAPO_PROFILE``,
   else ``WSRUN_PROFILE``; each directory of ``CAPO_PATH`` (colon-separated) and
   then ``~/.capo`` may hold ``<profile>.properties``;
2. the environment: the dotted name upper-cased with dots as underscores
   (``EDU_NRAO_WORKSPACES_DELIVERYSETTINGS_DOWNLOADDIRECTORY``);
3. ``--set NAME=VALUE`` on the command line.

Names are case-insensitive. Values of secret settings are masked wherever
they are printed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

SECRET_NAME = re.compile(
    r"(password|passwd|secret|token|credential|apikey|api_key|(^|[._])(access|private|secret)?key$)",
    re.I,
)
MASK = "********"
#: Line ends as Java's properties reader counts them.
_LINE_END = re.compile(r"\r\n|\r|\n")
_ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")


class SettingsError(Exception):
    pass


@dataclass(frozen=True)
class SettingValue:
    name: str
    value: str
    source: str  # "path:line", "environment NAME" or "--set"


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def env_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def parse_properties(path: str, env: Mapping[str, str]) -> dict[str, SettingValue]:
    """A profile file read exactly as ``java.util.Properties.load`` reads it
    (``key=value``, ``key: value`` or ``key value``; ``\\`` line continuation;
    ``\\uXXXX`` and the other escapes; ``#`` and ``!`` comments), as UTF-8, by
    javaproperties. wsrun adds: ``${env:NAME}`` in values, file:line in every
    error, and it refuses a key given twice (names are case-insensitive), an
    empty key and an INI section header, which Java would take silently as a key."""
    import javaproperties

    with open(path, encoding="utf-8") as f:
        text = f.read()
    values: dict[str, SettingValue] = {}
    lineno = 1
    elements = javaproperties.parse(text)
    while True:
        where = f"{path}:{lineno}"
        try:
            element = next(elements)
        except StopIteration:
            break
        except javaproperties.InvalidUEscapeError as e:
            raise SettingsError(f"{where}: invalid unicode escape {e.escape!r}") from None
        start, lineno = where, lineno + len(_LINE_END.findall(element.source))
        if not isinstance(element, javaproperties.KeyValue):
            continue
        key = element.key
        if not key:
            raise SettingsError(f"{start}: empty key")
        if key.startswith("[") and key.endswith("]") and not element.value:
            raise SettingsError(
                f"{start}: section headers like {key} are not allowed in a properties file"
            )
        folded = key.lower()
        if folded in values:
            raise SettingsError(
                f"{start}: duplicate key '{key}' (first at {values[folded].source})"
            )
        values[folded] = SettingValue(key, _expand_env(element.value, env, start), start)
    return values


def _expand_env(value: str, env: Mapping[str, str], where: str) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in env:
            raise SettingsError(f"{where}: environment variable {m.group(1)} is not set")
        return env[m.group(1)]

    return _ENV_REF.sub(sub, value)


class Settings:
    """All settings visible to a run, with where each came from."""

    def __init__(
        self,
        profile: str | None = None,
        overrides: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.env = dict(os.environ if env is None else env)
        self.profile = (
            profile or self.env.get("CAPO_PROFILE") or self.env.get("WSRUN_PROFILE") or None
        )
        self.files_searched: list[str] = []
        self._values: dict[str, SettingValue] = {}
        if self.profile:
            for directory in self.search_path():
                path = os.path.join(directory, f"{self.profile}.properties")
                self.files_searched.append(path)
                if os.path.isfile(path):
                    self._values.update(parse_properties(path, self.env))
        self._env_names = {k.upper(): k for k in self.env}
        for key, value in (overrides or {}).items():
            self._values[key.lower()] = SettingValue(key, value, "--set")

    def search_path(self) -> list[str]:
        dirs = [d for d in self.env.get("CAPO_PATH", "").split(":") if d]
        dirs.append(os.path.join(self.env.get("HOME", os.path.expanduser("~")), ".capo"))
        return dirs

    def get(self, name: str) -> SettingValue | None:
        found = self._values.get(name.lower())
        if found is not None and found.source == "--set":
            return found
        env_key = self._env_names.get(env_name(name))
        if env_key is not None:
            return SettingValue(name, self.env[env_key], f"environment {env_key}")
        return found

    def names(self) -> list[str]:
        return sorted(v.name for v in self._values.values())

    def where_searched(self, name: str) -> str:
        files = (
            ", ".join(self.files_searched)
            if self.files_searched
            else "no profile given (--profile or CAPO_PROFILE)"
        )
        return f"files: {files}; environment {env_name(name)}; --set {name}=..."


#: The password of a URL (scheme://user:password@host), wherever it is in a value.
URL_PASSWORD = re.compile(r"(://[^/\s:@]*:)[^/\s@]+@")


def display(name: str, value: object, secret: bool = False) -> str:
    """A value as it may be printed: masked when the setting is secret, and any URL
    password in it masked always (postgresql://u:pw@db -> postgresql://u:****@db)."""
    if secret or is_secret_name(name):
        return MASK
    return URL_PASSWORD.sub(r"\1****@", str(value))


def configured_url(
    explicit: str | None,
    env_var: str,
    setting: str,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> str | None:
    """Which backend a store or bus uses, in the order every one of them documents:
    an explicit URL (a command-line option), else the environment variable ``env_var``,
    else the setting ``setting`` (a profile, or ``--set`` through ``overrides``). None
    when none is given, so the caller picks its embedded default under $WSRUN_HOME."""
    if explicit:
        return explicit
    env = os.environ if env is None else env
    if env.get(env_var):
        return env[env_var]
    found = Settings(env=env, overrides=overrides).get(setting)
    if found is not None and found.value:
        return found.value
    return None
