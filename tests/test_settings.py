"""Settings resolved as Capo resolves them: profile files, environment, --set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import write
from wsrun.settings import Settings, SettingsError

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
        ("novalue\n", "expected key=value"),
        ("a=${env:NOPE_NOT_SET}\n", "NOPE_NOT_SET is not set"),
    ],
)
def test_bad_profile_files(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path / "p.properties", text)
    with pytest.raises(SettingsError, match=message):
        Settings(profile="p", env={"CAPO_PATH": str(tmp_path), "HOME": str(tmp_path)})


@pytest.mark.parametrize(
    "line", ["db.password: hunter2", "db.password:hunter2", "api.token hunter2"]
)
def test_a_malformed_line_of_a_secret_setting_is_not_echoed(tmp_path: Path, line: str) -> None:
    write(tmp_path / "p.properties", f"plain=1\n{line}\n")
    with pytest.raises(SettingsError, match="expected key=value") as e:
        Settings(profile="p", env={"CAPO_PATH": str(tmp_path), "HOME": str(tmp_path)})
    assert "hunter2" not in str(e.value) and ":2:" in str(e.value)


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
