"""Settings resolved as Capo resolves them: profile files, environment, --set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import write
from wsrun.core.settings import Settings, SettingsError

KEY = "edu.nrao.workspaces.DeliverySettings.downloadDirectory"


def test_profile_files_env_and_set_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = tmp_path / "a"
    home = tmp_path / "home"
    write(first / "test.properties", f"# comment\n{KEY} = /from/a\nedu.x.Y=${{env:HOME}}/sub\n")
    write(
        home / ".capo" / "test.properties",
        "edu.nrao.workspaces.deliverysettings.DOWNLOADURL=https://dl.example\n",
    )
    env = {"CAPO_PATH": str(first), "HOME": str(home)}
    s = Settings(profile="test", env=env)
    assert s.get(KEY).value == "/from/a" and s.get(KEY).source.endswith("a/test.properties:2")
    assert s.get("edu.x.y").value == f"{home}/sub"
    assert s.get("edu.nrao.workspaces.DeliverySettings.downloadUrl").value == "https://dl.example"
    env["EDU_NRAO_WORKSPACES_DELIVERYSETTINGS_DOWNLOADDIRECTORY"] = "/from/env"
    assert Settings(profile="test", env=env).get(KEY).value == "/from/env"
    s = Settings(profile="test", env=env, overrides={KEY: "/from/set"})
    assert s.get(KEY).value == "/from/set" and s.get(KEY).source == "--set"
    assert Settings(env={**env, "CAPO_PROFILE": "test"}).profile == "test"


@pytest.mark.parametrize(
    "text, message",
    [
        ("a=1\nA=2\n", "duplicate key 'A'"),
        ("[section]\na=1\n", "section headers"),
        (
            "a=1\n\nb=${env:NOPE_NOT_SET}\n",
            "p.properties:3: environment variable NOPE_NOT_SET is not set",
        ),
        ("a=1 \\\n  2\nb=\\u00zz\n", "p.properties:3: invalid unicode escape"),
        (
            "# one\nfruits apple, \\\n  pear\nFRUITS = kiwi\n",
            "p.properties:4: duplicate key 'FRUITS' .first at .*p.properties:2",
        ),
        ("= value\n", "empty key"),
    ],
)
def test_bad_profile_files(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path / "p.properties", text)
    with pytest.raises(SettingsError, match=message):
        Settings(profile="p", env={"CAPO_PATH": str(tmp_path), "HOME": str(tmp_path)})


@pytest.mark.parametrize("line", ["db.password = hunter2\\uZZZZ", "api.token hunter2\\u12"])
def test_a_malformed_line_of_a_secret_setting_is_not_echoed(tmp_path: Path, line: str) -> None:
    write(tmp_path / "p.properties", f"plain=1\n{line}\n")
    with pytest.raises(SettingsError, match="invalid unicode escape") as e:
        Settings(profile="p", env={"CAPO_PATH": str(tmp_path), "HOME": str(tmp_path)})
    assert "hunter2" not in str(e.value) and ":2:" in str(e.value)


@pytest.mark.parametrize(
    "text, key, value",
    [
        # The examples of java.util.Properties.load's documentation, verbatim.
        ("Truth = Beauty\n", "Truth", "Beauty"),
        (" Truth:Beauty\n", "Truth", "Beauty"),
        ("Truth                    :Beauty\n", "Truth", "Beauty"),
        (
            "fruits                           apple, banana, pear, \\\n"
            "                                 cantaloupe, watermelon, \\\n"
            "                                 kiwi, mango\n",
            "fruits",
            "apple, banana, pear, cantaloupe, watermelon, kiwi, mango",
        ),
        ("cheeses\n", "cheeses", ""),
        ("\\:\\= = \\u0041\\t\n", ":=", "A\t"),
        ("key\\ with\\ spaces = x\r\n", "key with spaces", "x"),
    ],
)
def test_java_documentation_examples(tmp_path: Path, text: str, key: str, value: str) -> None:
    write(tmp_path / "p.properties", "")
    (tmp_path / "p.properties").write_bytes(text.encode())
    s = Settings(profile="p", env={"CAPO_PATH": str(tmp_path), "HOME": str(tmp_path)})
    assert s.names() == [key] and s.get(key).value == value


def test_profile_files_read_as_java_reads_properties(tmp_path: Path) -> None:
    """The examples of java.util.Properties.load's documentation, and its escapes."""
    text = (
        "# The three Truth lines of the Java documentation say the same\n"
        "Truth = Beauty\n"
        "  Truth2:Beauty\n"
        "Truth3                    :Beauty\n"
        "fruits                           apple, banana, pear, \\\n"
        "                                  cantaloupe, watermelon, \\\n"
        "                                  kiwi, mango\n"
        "cheeses\n"
        "! a comment too, and a comment's backslash does not continue it \\\n"
        "key\\ with\\ spaces = x\n"
        "caf\\u00e9 = d\\u00e9j\\u00e0 vu\n"
        "\\u0041 = letter\n"
        "path = C:\\\\data\\tnext\n"
        "colon\\:key = a\\=b\n"
        "edu.home = ${env:HOME}/x\n"
        "last = ok"
    )
    write(tmp_path / "java.properties", text)
    s = Settings(profile="java", env={"CAPO_PATH": str(tmp_path), "HOME": "/h"})
    got = {name: s.get(name).value for name in s.names()}
    assert got == {
        "Truth": "Beauty",
        "Truth2": "Beauty",
        "Truth3": "Beauty",
        "fruits": "apple, banana, pear, cantaloupe, watermelon, kiwi, mango",
        "cheeses": "",
        "key with spaces": "x",
        "café": "déjà vu",
        "A": "letter",
        "path": "C:\\data\tnext",
        "colon:key": "a=b",
        "edu.home": "/h/x",
        "last": "ok",
    }
    assert s.get("cheeses").source.endswith("java.properties:8")
    assert s.get("key with spaces").source.endswith("java.properties:10")
    assert s.get("last").source.endswith("java.properties:16")


def test_missing_setting_fails_before_any_step(cli, tmp_path: Path) -> None:
    recipe = write(
        tmp_path / "r.yaml",
        f"""
        recipe: needs
        settings:
          downloads: {KEY}
        steps:
          - uses: mkdir
            with: {{path: "{{{{ settings.downloads }}}}/x"}}
    """,
    )
    r = cli(recipe, "--profile", "nope")
    assert r.code == 2
    assert f"missing setting '{KEY}'" in r.err and "nope.properties" in r.err
    r = cli(recipe, "--set", f"{KEY}={tmp_path}/dl", "--json")
    assert r.code == 0, r.err
    assert (tmp_path / "dl" / "x").is_dir()


def test_secrets_are_masked_in_output_and_journal(cli, tmp_path: Path, wsrun_home: Path) -> None:
    write(
        tmp_path / "capo" / "prod.properties",
        "edu.nrao.archive.dbPassword=hunter2\nedu.nrao.plain=visible\n",
    )
    recipe = write(
        tmp_path / "r.yaml",
        """
        recipe: secret
        settings:
          password: edu.nrao.archive.dbPassword
          plain: edu.nrao.plain
        steps:
          - uses: noop
            with: {n: "{{ settings.password | length }}"}
    """,
    )
    r = cli(recipe, "--profile", "prod", "--json")
    assert r.code == 0, r.err
    r2 = cli("settings", "--profile", "prod")
    assert "hunter2" not in r2.out and "********" in r2.out and "visible" in r2.out
    runs = cli("runs", "--json")
    run_id = json.loads(runs.out)[0]["id"]
    shown = cli("runs", "show", run_id, "--json")
    assert "hunter2" not in shown.out
    for f in wsrun_home.glob("journal.db*"):
        assert b"hunter2" not in f.read_bytes()


def test_url_passwords_in_settings_are_masked(cli, tmp_path: Path, wsrun_home: Path) -> None:
    """A URL setting is not secret by its name, but the password inside it is."""
    url = "postgresql://wsrun:hunter2@db.example/archive?files=s3://key:s3cret@bucket/a"
    write(tmp_path / "capo" / "prod.properties", f"edu.nrao.archive.url={url}\n")
    recipe = write(
        tmp_path / "r.yaml",
        """
        recipe: url
        settings:
          archive: edu.nrao.archive.url
        steps:
          - uses: noop
    """,
    )
    assert cli(recipe, "--profile", "prod").code == 0
    shown = cli("settings", "edu.nrao.archive.url", "--profile", "prod").out
    assert "postgresql://wsrun:****@db.example/archive?files=s3://key:****@bucket/a" in shown
    for f in wsrun_home.glob("journal.db*"):
        data = f.read_bytes()
        assert b"hunter2" not in data and b"s3cret" not in data
