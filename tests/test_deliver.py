"""The `deliver` tool as a recipe (engine/wsrun/packs/nrao/recipes/deliver.yaml), end to end.

Every option and combination of destination (-l, web root from --set or a
profile), -t, -r, -p/-P and --prefix; the error paths; all-or-nothing
delivery; idempotent re-runs and refusing to overwrite; dry runs that write
nothing and plan exactly what the real run does. Each delivery is checked with
``sha256sum -c`` inside it and its delivery.json against the schema.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from conftest import ROOT, snapshot
from fixtures.processing import BUILDERS, EB, Processing, imaging, vla_calibration
from wsrun.core.effects import create_file
from wsrun.core.fs import WorldView
from wsrun.steps import copy
from wsrun.steps import tar as tar_step
from wsrun.testing import plan_step, run_step

DIR_SETTING = "edu.nrao.workspaces.DeliverySettings.downloadDirectory"
URL_SETTING = "edu.nrao.workspaces.DeliverySettings.downloadUrl"
BASE_URL = "https://dl.example.org/"
VALIDATOR = Draft202012Validator(
    json.loads((ROOT / "schemas" / "delivery.schema.json").read_text())
)
SEED_USAGE = "usage: deliver [-h] [--prefix PREFIX] [-p | -P] [-l LOCAL_DESTINATION] [-t] [-r]"
SEED_HELP = [
    "SOURCE_DIRECTORY The directory where the products to be delivered are located",
    "--prefix PREFIX Prefix for the destination (a request ID perhaps)",
    "-p, --use-piperesults Use the CASA piperesults file, if present",
    "-P, --ignore-piperesults Ignore the CASA piperesults file",
    "Destination options:",
    "-l LOCAL_DESTINATION, --local-destination LOCAL_DESTINATION Deliver to this local directory "
    "instead of the appropriate web root",
    "-t, --tar Archive the delivered items as a tar file",
    "Product filtering options:",
    "-r, --rawdata Deliver the rawdata instead of the products",
]


# ---- helpers ----------------------------------------------------------------------------


def deliver(cli, *args) -> tuple[int, dict, str]:
    """Run `wsrun nrao/deliver ARGS --json`: (exit code, report, stderr)."""
    r = cli("nrao/deliver", *args, "--json")
    return r.code, (json.loads(r.out) if r.out.strip() else {}), r.err


def files_below(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def expected_for(p: Processing, *args: str) -> dict[str, str]:
    if "-r" in args:
        return p.rawdata
    if "-P" in args or not p.manifest:
        return p.by_name
    return p.products


def no_staging_left(*dirs: Path) -> None:
    for d in dirs:
        if d.is_dir():
            leftovers = [
                n
                for n in os.listdir(d)
                if n.endswith((".wsrun-staging", ".wsrun-old", ".wsrun-tmp"))
            ]
            assert not leftovers, f"left behind in {d}: {leftovers}"


def check_delivery(dest: Path, expected: dict[str, str], archive: str | None = None) -> dict:
    """A complete, correct delivery of ``expected`` (path -> product type) in ``dest``."""
    doc = json.loads((dest / "delivery.json").read_text())
    errors = sorted(VALIDATOR.iter_errors(doc), key=str)
    assert not errors, errors[0]
    assert doc["destination"] == str(dest)
    sums = subprocess.run(
        ["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=dest, capture_output=True, text=True
    )
    assert sums.returncode == 0, sums.stdout + sums.stderr
    listed = {line.split("  ", 1)[1] for line in (dest / "SHA256SUMS").read_text().splitlines()}
    assert {f["path"]: p["type"] for p in doc["products"] for f in p["files"]} == expected
    if archive is None:
        assert doc["archive"] is None
        assert files_below(dest) == set(expected) | {"SHA256SUMS", "delivery.json"}
        assert listed == set(expected) | {"delivery.json"}
        root = dest
    else:
        assert doc["archive"]["name"] == archive
        assert files_below(dest) == {archive, "SHA256SUMS", "delivery.json"}
        assert listed == {archive, "delivery.json"}
        assert doc["archive"]["bytes"] == (dest / archive).stat().st_size
        unpacked = dest.parent / f"{dest.name}-unpacked"
        unpacked.mkdir()
        subprocess.run(["tar", "-xf", str(dest / archive), "-C", str(unpacked)], check=True)
        assert os.listdir(unpacked) == [doc["archive"]["root"]]
        root = unpacked / doc["archive"]["root"]
        assert files_below(root) == set(expected)
    for product in doc["products"]:
        for f in product["files"]:
            path = root / f["path"]
            assert sha256(path) == f["sha256"] and path.stat().st_size == f["bytes"]
            assert path.stat().st_mtime_ns // 10**9 == f["mtime_ns"] // 10**9
        assert product["bytes"] == sum(f["bytes"] for f in product["files"])
        if product["kind"] == "file":
            assert product["checksum"] == product["files"][0]["sha256"]
        else:  # the recipe in docs/deliver.md reproduces it
            shell = "find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum | sha256sum"
            out = subprocess.run(
                shell, shell=True, cwd=root / product["path"], capture_output=True, text=True
            )
            assert out.stdout.split()[0] == product["checksum"]
    assert doc["files"] == len(expected)
    no_staging_left(dest.parent, dest.parent.parent)
    if archive:
        shutil.rmtree(dest.parent / f"{dest.name}-unpacked")
    return doc


def web_args(tmp_path: Path, how: str) -> list[str]:
    """Settings for a web-root delivery, from --set or from a CAPO_PATH profile file."""
    web = tmp_path / "downloads"
    web.mkdir(exist_ok=True)
    if how == "set":
        return ["--set", f"{DIR_SETTING}={web}", "--set", f"{URL_SETTING}={BASE_URL}"]
    capo = tmp_path / "capo"  # conftest points CAPO_PATH here
    capo.mkdir(exist_ok=True)
    (capo / "test.properties").write_text(f"{DIR_SETTING} = {web}\n{URL_SETTING} = {BASE_URL}\n")
    return ["--profile", "test"]


# ---- every combination -----------------------------------------------------------------

IDENTIFY = {
    "auto": [],
    "use": ["-p"],
    "ignore": ["-P"],
    "rawdata": ["-r"],
    "rawdata-use": ["-r", "-p"],
}


@pytest.mark.parametrize("identify", sorted(IDENTIFY))
@pytest.mark.parametrize("tar", [False, True], ids=["loose", "tar"])
@pytest.mark.parametrize("prefix", [None, "REQ-42"], ids=["noprefix", "prefix"])
@pytest.mark.parametrize("where", ["local", "web-set", "web-profile"])
def test_combinations(
    cli, tmp_path: Path, where: str, prefix: str | None, tar: bool, identify: str
) -> None:
    p = vla_calibration(tmp_path / "spool", "pretty")
    args = [str(p.root), *IDENTIFY[identify]]
    if prefix:
        args += ["--prefix", prefix]
    if tar:
        args.append("-t")
    args += (
        ["-l", str(tmp_path / "out")]
        if where == "local"
        else web_args(tmp_path, where.split("-")[1])
    )
    code, report, err = deliver(cli, *args)
    assert code == 0, err
    destination = Path(report["outputs"]["destination"])
    url = report["outputs"]["url"]
    if where == "local":
        assert destination == (tmp_path / "out" / prefix if prefix else tmp_path / "out")
        assert url is None
    else:
        rel = destination.relative_to(tmp_path / "downloads")
        token = rel.parts[0]
        assert re.fullmatch(r"[0-9a-f]{32}", token)
        assert rel.parts[1:] == ((prefix,) if prefix else ())
        assert url == f"{BASE_URL.rstrip('/')}/{token}" + (f"/{prefix}" if prefix else "")
    archive = f"{prefix or 'calibration'}.tar" if tar else None
    doc = check_delivery(destination, expected_for(p, *args), archive)
    assert doc["url"] == url and doc["prefix"] == prefix and doc["source"] == str(p.root)
    assert doc["identified_by"] == (
        "rawdata" if "-r" in args else "names" if "-P" in args else "pipeline_manifest"
    )
    assert doc["metadata"]["projectMetadata"]["projectCode"] == "19A-001"


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("tar", [False, True], ids=["loose", "tar"])
def test_every_processing_directory(cli, tmp_path: Path, name: str, tar: bool) -> None:
    p = BUILDERS[name](tmp_path / "spool")
    out = tmp_path / "out"
    code, report, err = deliver(cli, p.root, "-l", out, *(["-t"] if tar else []))
    assert code == 0, err
    check_delivery(out, expected_for(p), f"{p.root.name}.tar" if tar else None)


def test_layout_follows_product_types(cli, tmp_path: Path) -> None:
    p = imaging(tmp_path / "spool", "pretty")
    out = tmp_path / "out"
    assert deliver(cli, p.root, "-l", out)[0] == 0
    assert sorted(os.listdir(out)) == [
        "SHA256SUMS",
        "delivery.json",
        "images",
        "logs",
        "oussid.pipeline_manifest.xml",
        "scripts",
        "weblog",
    ]
    c = vla_calibration(tmp_path / "spool", "single")
    assert deliver(cli, c.root, "-l", tmp_path / "cal")[0] == 0
    assert (tmp_path / "cal" / EB / "ASDM.xml").is_file()  # execution blocks whole, by name
    assert (tmp_path / "cal" / EB / "ASDMBinary").is_dir()
    assert len(os.listdir(tmp_path / "cal" / "calibration")) == 3
    doc = json.loads((tmp_path / "cal" / "delivery.json").read_text())
    eb = next(x for x in doc["products"] if x["type"] == "execution_block")
    assert eb["kind"] == "dir" and eb["path"] == EB and eb["attributes"] == {"session": "session_1"}


def test_modes_and_mtimes_are_kept(cli, tmp_path: Path) -> None:
    p = vla_calibration(tmp_path / "spool", "pretty")
    script = p.root / "products" / "casa_pipescript.py"
    script.chmod(0o750)
    sdm = p.root / "rawdata" / EB
    assert deliver(cli, p.root, "-l", tmp_path / "out")[0] == 0
    copy = tmp_path / "out" / "scripts" / "casa_pipescript.py"
    assert copy.stat().st_mode & 0o777 == 0o750
    assert copy.stat().st_mtime_ns == script.stat().st_mtime_ns
    assert (tmp_path / "out" / EB).stat().st_mtime_ns == sdm.stat().st_mtime_ns


# ---- dry run, re-runs, overwriting -----------------------------------------------------------

CASES = {
    "loose": [],
    "tar": ["-t"],
    "rawdata": ["-r"],
    "prefix-ignore": ["--prefix", "R1", "-P"],
    "nested": ["--prefix", "R1"],
}


def effects(report: dict) -> list[list[dict]]:
    return [s["effects"] for s in report["steps"]]


def delivery_effects(report: dict) -> list[dict]:
    """The effects of the recipe's atomic group, which writes the delivery."""
    (step,) = [s for s in report["steps"] if s["id"] == "delivery"]
    assert step["uses"] == "group"
    return step["effects"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_dry_run_writes_nothing_and_plans_the_real_run(cli, tmp_path: Path, case: str) -> None:
    p = vla_calibration(tmp_path / "spool", "pretty")
    out = tmp_path / "out" / "deep" if case == "nested" else tmp_path / "out"
    args = [p.root, "-l", out, *CASES[case]]
    before = snapshot(tmp_path / "spool")
    code, dry, err = deliver(cli, *args, "--dry-run")
    assert code == 0, err
    assert snapshot(tmp_path / "spool") == before and not (tmp_path / "out").exists()
    no_staging_left(tmp_path)
    code, real, err = deliver(cli, *args)
    assert code == 0, err
    assert effects(dry) == effects(real)
    assert dry["outputs"] == real["outputs"]
    ops = [e["op"] for e in delivery_effects(real)]
    assert ops.count("create_file") >= 3 and "remove" not in ops
    # Again: nothing to do, nothing touched.
    before = snapshot(tmp_path / "out")
    dest = Path(real["outputs"]["destination"])
    mtimes = {f: (dest / f).stat().st_mtime_ns for f in ("delivery.json", "SHA256SUMS")}
    code, again, err = deliver(cli, *args)
    assert code == 0, err
    assert again["status"] == "ok" and effects(again) == [[], [], []]
    assert snapshot(tmp_path / "out") == before
    assert all((dest / f).stat().st_mtime_ns == m for f, m in mtimes.items())
    code, dry_again, err = deliver(cli, *args, "--dry-run")
    assert code == 0 and effects(dry_again) == [[], [], []]


def test_dry_run_to_the_web_root(cli, tmp_path: Path) -> None:
    """The unguessable name differs between runs; everything else is the same."""
    p = imaging(tmp_path / "spool", "single")
    args = [p.root, "--prefix", "R7", "-t", *web_args(tmp_path, "set")]
    code, dry, err = deliver(cli, *args, "--dry-run")
    assert code == 0, err
    assert os.listdir(tmp_path / "downloads") == []
    code, real, err = deliver(cli, *args)
    assert code == 0, err

    def normalised(report: dict) -> str:
        token = Path(report["outputs"]["destination"]).parent.name
        return json.dumps(effects(report)).replace(token, "TOKEN")

    assert normalised(dry) == normalised(real)
    # A second delivery to the web root is a new one.
    code, second, err = deliver(cli, *args)
    assert code == 0 and second["outputs"]["destination"] != real["outputs"]["destination"]
    assert len(os.listdir(tmp_path / "downloads")) == 2


def test_refuses_a_different_delivery_unless_forced(cli, tmp_path: Path) -> None:
    p = vla_calibration(tmp_path / "spool", "pretty")
    out = tmp_path / "out"
    assert deliver(cli, p.root, "-l", out)[0] == 0
    old = (out / "delivery.json").read_text()
    log = p.root / "products" / "casa_commands.log"
    log.write_text(log.read_text() + "hifv_exportdata()\n")
    code, report, err = deliver(cli, p.root, "-l", out)
    assert code == 1
    assert "already holds a different delivery" in err and "--force" in err
    assert (out / "delivery.json").read_text() == old
    check_delivery(out, p.products)  # the old delivery is intact
    code, dry, err = deliver(cli, p.root, "-l", out, "--force", "--dry-run")
    assert code == 0, err
    assert delivery_effects(dry)[:2] == [
        {"op": "remove", "path": str(out)},
        {"op": "create_dir", "path": str(out)},
    ]
    code, real, err = deliver(cli, p.root, "-l", out, "--force")
    assert code == 0, err
    assert effects(dry) == effects(real)
    doc = check_delivery(out, p.products)
    assert doc != json.loads(old)
    assert (out / "logs" / "casa_commands.log").read_text().endswith("hifv_exportdata()\n")


def test_a_damaged_delivery_is_different(cli, tmp_path: Path) -> None:
    p = vla_calibration(tmp_path / "spool", "pretty")
    out = tmp_path / "out"
    assert deliver(cli, p.root, "-l", out, "-t")[0] == 0
    (out / "calibration.tar").write_bytes(b"truncated")
    assert deliver(cli, p.root, "-l", out, "-t")[0] == 1
    assert deliver(cli, p.root, "-l", out, "-t", "--force")[0] == 0
    check_delivery(out, p.products, "calibration.tar")
    # loose instead of tar is a different delivery too
    assert deliver(cli, p.root, "-l", out)[0] == 1


def test_force_is_hidden_but_accepted(cli) -> None:
    r = cli("nrao/deliver", "--help")
    assert r.code == 0 and "--force" not in r.out
    r = cli("nrao/deliver", "/nonexistent", "--force", "-l", "/tmp/x")
    assert r.code == 1 and "unrecognized" not in r.err


def test_an_empty_destination_is_filled(cli, tmp_path: Path) -> None:
    p = imaging(tmp_path / "spool", None)
    out = tmp_path / "out"
    out.mkdir()
    code, report, err = deliver(cli, p.root, "-l", out)
    assert code == 0, err
    assert not any(
        e["op"] == "create_dir" and e["path"] == str(out) for e in delivery_effects(report)
    )
    check_delivery(out, p.by_name)


def test_refuses_a_directory_that_is_not_a_delivery(cli, tmp_path: Path) -> None:
    p = imaging(tmp_path / "spool", None)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for extra in ([], ["--force"]):
        code, report, err = deliver(cli, p.root, "-l", out, *extra)
        assert code == 1 and "holds no delivery" in err
    assert os.listdir(out) == ["notes.txt"]


def test_a_leftover_staging_directory_is_replaced(cli, tmp_path: Path) -> None:
    p = imaging(tmp_path / "spool", None)
    stale = tmp_path / ".out.wsrun-staging"
    (stale / "images").mkdir(parents=True)
    (stale / "images" / "half.fits").write_bytes(b"SIMPLE")
    assert deliver(cli, p.root, "-l", tmp_path / "out")[0] == 0
    check_delivery(tmp_path / "out", p.by_name)
    assert not stale.exists()


# ---- errors -------------------------------------------------------------------------


def test_missing_source(cli, tmp_path: Path) -> None:
    code, report, err = deliver(cli, tmp_path / "nope", "-l", tmp_path / "out")
    assert code == 1 and "source directory does not exist" in err
    assert not (tmp_path / "out").exists()


def test_empty_products(cli, tmp_path: Path) -> None:
    p = vla_calibration(tmp_path / "spool", None)
    shutil.rmtree(p.root / "products")
    (p.root / "products").mkdir()
    code, report, err = deliver(cli, p.root, "-l", tmp_path / "out")
    assert code == 1 and "no products to deliver" in err
    shutil.rmtree(p.root / "rawdata")
    (p.root / "rawdata").mkdir()
    code, report, err = deliver(cli, p.root, "-l", tmp_path / "out", "-r")
    assert code == 1 and "no products to deliver" in err
    assert not (tmp_path / "out").exists()


def test_use_piperesults_without_a_manifest(cli, tmp_path: Path) -> None:
    p = imaging(tmp_path / "spool", None)
    code, report, err = deliver(cli, p.root, "-p", "-l", tmp_path / "out")
    assert code == 1 and "no CASA pipeline manifest" in err and "-p" in err
    assert not (tmp_path / "out").exists()


def test_manifest_naming_a_missing_file_copies_nothing(cli, tmp_path: Path) -> None:
    p = vla_calibration(tmp_path / "spool", "pretty")
    (p.root / "products" / f"{EB}.ms.calapply.txt").unlink()
    code, report, err = deliver(cli, p.root, "-l", tmp_path / "out")
    assert code == 1 and "names missing files" in err and f"{EB}.ms.calapply.txt" in err
    assert not (tmp_path / "out").exists()
    no_staging_left(tmp_path)


def test_piperesults_options_are_exclusive(cli, tmp_path: Path) -> None:
    r = cli("nrao/deliver", tmp_path, "-p", "-P")
    assert r.code == 2 and "not allowed with argument" in r.err


def test_destination_below_a_regular_file(cli, tmp_path: Path) -> None:
    """Fails for root too (chmod does not stop root)."""
    p = imaging(tmp_path / "spool", None)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, report, err = deliver(cli, p.root, "-l", blocker / "sub", "--prefix", "R1")
    assert code == 1 and "not a directory" in err
    code, report, err = deliver(cli, p.root, "-l", blocker)
    assert code == 1 and "not a directory" in err
    assert blocker.read_text() == "x"
    no_staging_left(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_unwritable_destination(cli, tmp_path: Path) -> None:
    p = imaging(tmp_path / "spool", None)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        code, report, err = deliver(cli, p.root, "-l", locked / "out")
        assert code == 1 and "Permission denied" in err
    finally:
        locked.chmod(0o700)
    assert os.listdir(locked) == []


def test_missing_settings(cli, tmp_path: Path) -> None:
    p = imaging(tmp_path / "spool", None)
    code, report, err = deliver(cli, p.root)
    assert code == 1 and DIR_SETTING in err and "-l" in err
    web = tmp_path / "downloads"
    web.mkdir()
    code, report, err = deliver(cli, p.root, "--set", f"{DIR_SETTING}={web}")
    assert code == 1 and URL_SETTING in err
    code, report, err = deliver(
        cli,
        p.root,
        "--set",
        f"{DIR_SETTING}={tmp_path / 'missing'}",
        "--set",
        f"{URL_SETTING}={BASE_URL}",
    )
    assert code == 1 and "does not exist" in err
    assert os.listdir(web) == []


@pytest.mark.parametrize("prefix", ["a/b", "..", ".hidden"])
def test_bad_prefix(cli, tmp_path: Path, prefix: str) -> None:
    p = imaging(tmp_path / "spool", None)
    code, report, err = deliver(cli, p.root, "-l", tmp_path / "out", "--prefix", prefix)
    assert code == 1 and "plain directory name" in err


def test_destination_inside_the_products(cli, tmp_path: Path) -> None:
    p = imaging(tmp_path / "spool", None)
    code, report, err = deliver(cli, p.root, "-r", "-l", p.root / "rawdata" / f"{EB}.ms" / "out")
    assert code == 1 and "overlap" in err


def _fail_after(monkeypatch: pytest.MonkeyPatch, module, name: str, calls: int) -> None:
    real = getattr(module, name)
    count = {"n": 0}

    def failing(*args, **kwargs):
        count["n"] += 1
        if count["n"] > calls:
            raise OSError(5, "Input/output error", str(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, failing)


@pytest.mark.parametrize("tar", [False, True], ids=["loose", "tar"])
def test_a_failure_leaves_nothing_behind(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tar: bool
) -> None:
    p = vla_calibration(tmp_path / "spool", "pretty")
    if tar:
        _fail_after(monkeypatch, tar_step, "hash_file", 5)
    else:
        _fail_after(monkeypatch, copy, "copy_file_placed", 5)
    code, report, err = deliver(
        cli, p.root, "-l", tmp_path / "out" / "R1", *(["-t"] if tar else [])
    )
    assert code == 1 and "Input/output error" in err
    assert not (tmp_path / "out").exists()
    no_staging_left(tmp_path)


def test_a_failed_replacement_keeps_the_old_delivery(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = vla_calibration(tmp_path / "spool", "pretty")
    out = tmp_path / "out"
    assert deliver(cli, p.root, "-l", out)[0] == 0
    ppr = p.root / "products" / "PPR.xml"
    old = ppr.read_text()
    ppr.write_text("<SciPipeRequest>changed</SciPipeRequest>\n")
    _fail_after(monkeypatch, copy, "copy_file_placed", 3)
    code, report, err = deliver(cli, p.root, "-l", out, "--force")
    assert code == 1 and "Input/output error" in err
    check_delivery(out, p.products)  # the old delivery, intact
    assert (out / "scripts" / "PPR.xml").read_text() == old
    no_staging_left(tmp_path)


# ---- symlinks ------------------------------------------------------------------------------


def test_symlinks_are_delivered_as_content(cli, tmp_path: Path) -> None:
    p = vla_calibration(tmp_path / "spool", "pretty")
    cache = tmp_path / "cache"
    shutil.move(p.root / "rawdata" / EB, cache / EB)
    (p.root / "rawdata" / EB).symlink_to(cache / EB)  # rawdata often links into a cache
    (cache / EB / "Extra.xml").symlink_to(cache / EB / "Main.xml")
    code, report, err = deliver(cli, p.root, "-l", tmp_path / "out")
    assert code == 0, err
    expected = {**p.products, f"{EB}/Extra.xml": "execution_block"}
    check_delivery(tmp_path / "out", expected)
    assert not any(f.is_symlink() for f in (tmp_path / "out").rglob("*"))
    code, report, err = deliver(cli, p.root, "-l", tmp_path / "tarred", "-t")
    assert code == 0, err
    check_delivery(tmp_path / "tarred", expected, "calibration.tar")
    (cache / EB / "Broken.xml").symlink_to(cache / "nowhere")
    code, report, err = deliver(cli, p.root, "-l", tmp_path / "out2")
    assert code == 1 and "dangling" in err


# ---- the `deliver` command ---------------------------------------------------------------


def deliver_script() -> Path:
    script = Path(sys.executable).parent / "deliver"
    if not script.exists():
        pytest.skip("the deliver console script is not installed (pip install -e .)")
    return script


def normalise(text: str) -> str:
    return " ".join(text.split())


def test_help_is_the_seed_command_line() -> None:
    r = subprocess.run([deliver_script(), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    text = normalise(r.stdout)
    assert text.startswith(SEED_USAGE)
    assert normalise(r.stdout.split("\n\n")[0]).endswith("] SOURCE_DIRECTORY")
    for line in SEED_HELP:
        assert normalise(line) in text
    assert "--dry-run" in text and "--json" in text and "--profile" in text
    assert "--force" not in text
    assert text.index("Destination options:") < text.index("Product filtering options:")


def test_deliver_script(tmp_path: Path) -> None:
    script = deliver_script()
    p = vla_calibration(tmp_path / "spool", "single")
    out = tmp_path / "out"
    r = subprocess.run(
        [script, p.root, "-l", out, "--prefix", "R1"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert f"destination: {out / 'R1'}" in r.stdout
    check_delivery(out / "R1", p.products)
    r = subprocess.run(
        [script, p.root, "-l", out, "--prefix", "R1", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["status"] == "ok" and report["outputs"] == {
        "destination": str(out / "R1"),
        "url": None,
    }
    web = web_args(tmp_path, "set")
    r = subprocess.run([script, p.root, "-t", *web], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert re.search(r"url: https://dl\.example\.org/[0-9a-f]{32}\n", r.stdout)
    r = subprocess.run([script, p.root, "-p", "-P"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "usage: deliver" in r.stderr


def test_products_that_would_collide(cli, tmp_path: Path) -> None:
    p = vla_calibration(tmp_path / "spool", None)
    (p.root / "products" / "calibration").mkdir()  # an "other" directory named like a category
    (p.root / "products" / "calibration" / "notes.txt").write_text("x")
    code, report, err = deliver(cli, p.root, "-l", tmp_path / "out")
    assert code == 1 and "would both be delivered as calibration" in err
    (p.root / "products" / "calibration" / "notes.txt").unlink()
    (p.root / "products" / "calibration").rmdir()
    (p.root / "products" / "SHA256SUMS").write_text("x")  # a name the delivery itself uses
    code, report, err = deliver(cli, p.root, "-l", tmp_path / "out")
    assert code == 1 and "would both be delivered as SHA256SUMS" in err
    assert not (tmp_path / "out").exists()


# ---- the steps on their own -----------------------------------------------------------------


def test_dry_run_chain_sees_planned_products_and_plans_the_delivery(tmp_path: Path) -> None:
    """A dry run where an earlier step would write a product: every step sees
    it, and later steps see the planned delivery."""
    p = imaging(tmp_path / "spool", None)
    extra_source = tmp_path / "made-by-casa.fits"
    extra_source.write_bytes(b"SIMPLE  = T" + bytes(2869))
    planned = p.root / "products" / "late.fits"
    view = WorldView()
    view.record(create_file(str(planned), extra_source.stat().st_size, source=str(extra_source)))
    out = tmp_path / "out"
    found = plan_step(
        "find-products", {"source": str(p.root), "destination": str(out)}, str(tmp_path), view=view
    )
    assert any(x["name"] == "late.fits" for x in found.outputs["products"])
    assert found.outputs["placement"]["images/late.fits"] == str(planned)
    params = {
        "files": found.outputs["placement"],
        "to": str(out),
        "follow_symlinks": True,
        "checksum": "sha256",
    }
    plan = plan_step("copy", params, str(tmp_path), view=view)
    late = [e for e in plan.effects if e.path == str(out / "images" / "late.fits")]
    assert late and late[0].bytes == 2880 and late[0].source == str(planned)
    assert plan.outputs["checksums"][str(out / "images" / "late.fits")] is None  # not yet known
    for effect in plan.effects:
        view.record(effect)
    describe = {
        "to": str(out / "delivery.json"),
        "value": found.outputs["delivery"],
        "digests": plan.outputs["checksums"],
    }
    described = plan_step("write-json", describe, str(tmp_path), view=view)
    (effect,) = described.effects
    assert effect.path == str(out / "delivery.json") and effect.bytes == described.outputs["bytes"]
    view.record(effect)
    sums = {"paths": str(out), "to": str(out / "SHA256SUMS"), "digests": plan.outputs["checksums"]}
    for effect in plan_step("checksum", sums, str(tmp_path), view=view).effects:
        view.record(effect)
    assert view.is_file(str(out / "SHA256SUMS")) and view.is_file(str(out / "images" / "late.fits"))
    assert view.is_file(str(out / "delivery.json"))
    assert not out.exists() and not planned.exists()


def test_step_outputs(tmp_path: Path) -> None:
    """find-products, tar and write-json as the recipe chains them, run one by one."""
    p = imaging(tmp_path / "spool", "pretty")
    dest = tmp_path / "out" / "R1"
    params = {"source": str(p.root), "destination": str(dest), "prefix": "R1", "tar": True}
    found = run_step("find-products", params, str(tmp_path))[1].outputs
    archive = dest / "R1.tar"
    assert found["archive"] == str(archive)
    assert found["files"] == len(p.products)
    # every file in products/ is a product of this imaging run
    assert found["bytes"] == sum(f.stat().st_size for f in (p.root / "products").iterdir())
    dest.mkdir(parents=True)
    pack = {
        "members": found["members"],
        "to": str(archive),
        "follow_symlinks": True,
        "checksum": "sha256",
    }
    plan, result = run_step("tar", pack, str(tmp_path))
    assert plan.effects == result.effects
    checksums = result.outputs["checksums"]
    assert checksums[str(archive)] == sha256(archive)
    assert set(checksums) == {str(archive)} | {f"R1/{rel}" for rel in p.products}
    assert (
        found["delivery"]["archive"]["bytes"] == archive.stat().st_size == result.outputs["bytes"]
    )
    describe = {"to": str(dest / "delivery.json"), "value": found["delivery"], "digests": checksums}
    run_step("write-json", describe, str(tmp_path))
    sums = {"paths": str(dest), "to": str(dest / "SHA256SUMS"), "digests": checksums}
    run_step("checksum", sums, str(tmp_path))
    check_delivery(dest, p.products, "R1.tar")


@pytest.mark.parametrize("tar", [False, True], ids=["loose", "tar"])
def test_a_delivery_run_again_reads_none_of_its_files(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tar: bool
) -> None:
    """The digests of what a delivery staged are recorded under their final
    paths when it is renamed into place, so running it again (or a dry run)
    finds it unchanged without reading a file; a file changed since is read."""
    p = vla_calibration(tmp_path / "spool", "pretty")
    out = tmp_path / "out"
    args = [p.root, "-l", out, *(["-t"] if tar else [])]
    assert deliver(cli, *args)[0] == 0
    reads: list[str] = []
    module = tar_step if tar else copy
    real = module.hash_file

    def counted(path: str, *a, **k) -> str:
        reads.append(path)
        return real(path, *a, **k)

    monkeypatch.setattr(module, "hash_file", counted)
    for extra in (["--dry-run"], []):
        code, report, err = deliver(cli, *args, *extra)
        assert code == 0 and effects(report) == [[], [], []], err
    assert reads == []
    # the same bytes written again: same size and mtime, but not the file recorded
    victim = out / "calibration.tar" if tar else out / "scripts" / "PPR.xml"
    st = victim.stat()
    victim.write_bytes(victim.read_bytes())
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    code, report, err = deliver(cli, *args)
    assert code == 0 and effects(report) == [[], [], []], err
    assert reads == [str(victim)]
