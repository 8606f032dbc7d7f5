"""The checksum step: coreutils-compatible lists, dry runs, idempotency."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from conftest import tree
from wsrun.core.effects import create_file
from wsrun.core.fs import WorldView
from wsrun.core.hashing import CHUNK, hash_files
from wsrun.core.step import StepContext, StepError, load_step
from wsrun.testing import effect_dicts, plan_step, run_step


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def delivery(tmp_path: Path) -> Path:
    d = tmp_path / "delivery"
    (d / "products" / "sub").mkdir(parents=True)
    (d / "a.fits").write_bytes(b"alpha")
    (d / "products" / "b c.xml").write_bytes(b"<xml/>\n")
    (d / "products" / "sub" / "z.dat").write_bytes(os.urandom(3 * CHUNK + 17))
    (d / "empty").write_bytes(b"")
    return d


def check(tool: str, sums: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool, "-c", "--strict", sums.name],
        cwd=sums.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_writes_a_list_sha256sum_accepts(delivery: Path, tmp_path: Path) -> None:
    sums = delivery / "SHA256SUMS"
    plan, result = run_step(
        "checksum", {"paths": "delivery", "to": "delivery/SHA256SUMS"}, str(tmp_path)
    )

    assert check("sha256sum", sums).returncode == 0
    lines = sums.read_text().splitlines()
    names = [line.split("  ", 1)[1] for line in lines]
    assert names == sorted(names) == ["a.fits", "empty", "products/b c.xml", "products/sub/z.dat"]
    expected = {
        str(p): sha256(p.read_bytes()) for p in delivery.rglob("*") if p.is_file() and p != sums
    }
    assert result.outputs["checksums"] == expected
    assert result.outputs["file"] == str(sums)
    assert effect_dicts(plan.effects) == effect_dicts(result.effects)
    assert effect_dicts(result.effects) == [
        {"op": "create_file", "path": str(sums), "bytes": sums.stat().st_size}
    ]
    assert sums.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha512"])
def test_other_algorithms_match_coreutils(algorithm: str, delivery: Path, tmp_path: Path) -> None:
    sums = delivery / f"{algorithm.upper()}SUMS"
    params = {"paths": str(delivery), "to": str(sums), "algorithm": algorithm}
    _, result = run_step("checksum", params, str(tmp_path))
    assert check(f"{algorithm}sum", sums).returncode == 0
    data = (delivery / "a.fits").read_bytes()
    assert (
        result.outputs["checksums"][str(delivery / "a.fits")]
        == hashlib.new(algorithm, data).hexdigest()
    )


def test_escapes_names_like_coreutils(tmp_path: Path) -> None:
    d = tmp_path / "odd"
    d.mkdir()
    for name in ["back\\slash", "new\nline", "cr\r", "sp ace", "tab\there", "ünï"]:
        (d / name).write_bytes(name.encode())
    sums = d / "SUMS"
    run_step("checksum", {"paths": "odd", "to": "odd/SUMS"}, str(tmp_path))
    proc = check("sha256sum", sums)
    assert proc.returncode == 0, proc.stderr
    ours = sorted(sums.read_bytes().splitlines(keepends=True))
    coreutils = subprocess.run(
        ["sha256sum", *sorted(os.listdir(d))], cwd=d, capture_output=True, check=True
    ).stdout
    assert ours == sorted(
        line for line in coreutils.splitlines(keepends=True) if b"SUMS" not in line
    )


def test_explicit_files_relative_to_another_directory(delivery: Path, tmp_path: Path) -> None:
    out = tmp_path / "reports"
    out.mkdir()
    params = {
        "paths": ["delivery/a.fits", "delivery/products", "delivery/a.fits"],
        "to": "reports/sums.txt",
    }
    _, result = run_step("checksum", params, str(tmp_path))
    sums = out / "sums.txt"
    text = sums.read_text()
    assert text.count("a.fits") == 1
    assert "  ../delivery/products/b c.xml\n" in text
    assert check("sha256sum", sums).returncode == 0
    assert len(result.outputs["checksums"]) == 3

    params["relative_to"] = "delivery"
    params["to"] = "reports/rel.txt"
    run_step("checksum", params, str(tmp_path))
    rel = (out / "rel.txt").read_text()
    assert rel.splitlines()[0].endswith("  a.fits")
    proc = subprocess.run(
        ["sha256sum", "-c", str(out / "rel.txt")], cwd=delivery, capture_output=True
    )
    assert proc.returncode == 0


def test_exclude_globs_apply_inside_directories(delivery: Path, tmp_path: Path) -> None:
    params = {"paths": ["delivery", "delivery/empty"], "exclude": ["products/sub", "empty"]}
    _, result = run_step("checksum", params, str(tmp_path))
    names = sorted(os.path.relpath(p, delivery) for p in result.outputs["checksums"])
    assert names == ["a.fits", "empty", "products/b c.xml"]  # named explicitly: kept


def test_with_a_manifest_beside_it_converges(delivery: Path, tmp_path: Path) -> None:
    manifest = {"root": "delivery", "exclude": "SHA256SUMS"}
    sums = {"paths": "delivery", "to": "delivery/SHA256SUMS"}
    for _ in range(2):
        run_step("manifest", manifest, str(tmp_path))
        run_step("checksum", sums, str(tmp_path))
    assert run_step("manifest", manifest, str(tmp_path))[1].effects == []
    assert run_step("checksum", sums, str(tmp_path))[1].effects == []
    assert "MANIFEST.json" in (delivery / "SHA256SUMS").read_text()
    assert check("sha256sum", delivery / "SHA256SUMS").returncode == 0


def test_without_to_only_computes(delivery: Path, tmp_path: Path) -> None:
    before = tree(delivery)
    plan, result = run_step("checksum", {"paths": "delivery/a.fits"}, str(tmp_path))
    assert plan.effects == result.effects == []
    assert result.outputs == {
        "checksums": {str(delivery / "a.fits"): sha256(b"alpha")},
        "file": None,
    }
    assert tree(delivery) == before  # (the digest is recorded under $WSRUN_HOME)


def test_skips_its_own_list_temp_files_and_symlinks(delivery: Path, tmp_path: Path) -> None:
    (delivery / "SHA256SUMS").write_text("stale\n")
    (delivery / ".x.wsrun-tmp").write_text("leftover")
    (delivery / "link").symlink_to("a.fits")
    _, result = run_step(
        "checksum", {"paths": "delivery", "to": "delivery/SHA256SUMS"}, str(tmp_path)
    )
    names = {os.path.basename(p) for p in result.outputs["checksums"]}
    assert names == {"a.fits", "empty", "b c.xml", "z.dat"}
    assert check("sha256sum", delivery / "SHA256SUMS").returncode == 0


def test_dry_run_writes_nothing_and_plans_the_real_effects(delivery: Path, tmp_path: Path) -> None:
    params = {"paths": "delivery", "to": "delivery/SHA256SUMS"}
    before = tree(tmp_path)
    dry = plan_step("checksum", params, str(tmp_path), view=WorldView())
    assert tree(tmp_path) == before
    _, result = run_step("checksum", params, str(tmp_path))
    assert effect_dicts(dry.effects) == effect_dicts(result.effects)
    assert dry.effects[0].content == (delivery / "SHA256SUMS").read_bytes()
    assert dry.outputs == result.outputs


def test_second_run_changes_nothing(delivery: Path, tmp_path: Path) -> None:
    params = {"paths": "delivery", "to": "delivery/SHA256SUMS"}
    run_step("checksum", params, str(tmp_path))
    sums = delivery / "SHA256SUMS"
    os.chmod(sums, 0o600)
    mtime = sums.stat().st_mtime_ns
    plan, result = run_step("checksum", params, str(tmp_path))
    assert plan.effects == result.effects == []
    assert result.status == "ok"
    assert sums.stat().st_mtime_ns == mtime

    (delivery / "a.fits").write_bytes(b"changed")
    _, result = run_step("checksum", params, str(tmp_path))
    assert result.status == "changed"
    assert sha256(b"changed") in sums.read_text()
    assert sums.stat().st_mode & 0o777 == 0o600  # an existing list keeps its mode


def test_dry_run_chain_sees_planned_files(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    view = WorldView()
    rendered = plan_step(
        "template",
        {"content": "hello {{ who }}\n", "to": "out/README", "vars": {"who": "x"}},
        str(tmp_path),
        view=view,
    )
    for e in rendered.effects:
        view.record(e)
    plan = plan_step("checksum", {"paths": "out", "to": "out/SUMS"}, str(tmp_path), view=view)
    assert plan.outputs["checksums"] == {str(tmp_path / "out" / "README"): sha256(b"hello x\n")}
    assert plan.effects[0].content == sha256(b"hello x\n").encode() + b"  README\n"
    assert not (tmp_path / "out" / "README").exists()


def test_dry_run_with_unknown_content_still_knows_the_size(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    view = WorldView()
    view.record(create_file(str(tmp_path / "out" / "unpacked.bin"), bytes=10))  # e.g. from untar
    plan = plan_step("checksum", {"paths": "out", "to": "out/SUMS"}, str(tmp_path), view=view)
    assert plan.outputs["checksums"] == {str(tmp_path / "out" / "unpacked.bin"): None}
    assert plan.effects[0].content is None
    (tmp_path / "out" / "unpacked.bin").write_bytes(b"0123456789")
    _, result = run_step("checksum", {"paths": "out", "to": "out/SUMS"}, str(tmp_path))
    assert effect_dicts(plan.effects) == effect_dicts(result.effects)


def test_missing_path_is_an_error(delivery: Path, tmp_path: Path) -> None:
    before = tree(tmp_path)
    with pytest.raises(StepError, match="no such file or directory") as err:
        run_step("checksum", {"paths": ["delivery", "nope"], "to": "delivery/SUMS"}, str(tmp_path))
    assert err.value.path == str(tmp_path / "nope")
    assert tree(tmp_path) == before


def test_nothing_to_list(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert run_step("checksum", {"paths": []}, str(tmp_path))[1].outputs["checksums"] == {}
    with pytest.raises(StepError, match="no files to list"):
        run_step("checksum", {"paths": "empty", "to": "empty/SUMS"}, str(tmp_path))
    assert os.listdir(tmp_path / "empty") == []


def test_refuses_to_list_itself_and_missing_directory(delivery: Path, tmp_path: Path) -> None:
    (delivery / "SUMS").write_text("")
    with pytest.raises(StepError, match="itself"):
        run_step("checksum", {"paths": "delivery/SUMS", "to": "delivery/SUMS"}, str(tmp_path))
    with pytest.raises(StepError, match="directory does not exist"):
        run_step("checksum", {"paths": "delivery", "to": "nowhere/SUMS"}, str(tmp_path))
    (tmp_path / "adir").mkdir()
    with pytest.raises(StepError, match="not a regular file"):
        run_step("checksum", {"paths": "delivery/a.fits", "to": "adir"}, str(tmp_path))


def test_failed_write_leaves_no_partial_file(
    delivery: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load_step("checksum")
    ctx = StepContext(fs=WorldView(), workdir=str(tmp_path))
    plan = module.plan({"paths": "delivery", "to": "delivery/SUMS"}, ctx)
    before = tree(tmp_path)

    def fail(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device", dst)

    monkeypatch.setattr("wsrun.core.fileio.os.replace", fail)
    with pytest.raises(OSError):
        module.apply(plan, ctx)
    assert tree(tmp_path) == before


def test_hash_files_in_parallel_reports_the_real_error(tmp_path: Path) -> None:
    paths = []
    for i in range(40):
        p = tmp_path / f"f{i}"
        p.write_bytes(str(i).encode() * (i * 1000))
        paths.append(str(p))
    ctx = StepContext(fs=WorldView(), workdir=str(tmp_path))
    got = hash_files(ctx, paths, "sha256")
    assert got == {p: (sha256(Path(p).read_bytes()), os.path.getsize(p)) for p in paths}
    with pytest.raises(FileNotFoundError):
        hash_files(ctx, [*paths, str(tmp_path / "missing")], "sha256")


def test_reports_progress_and_honours_the_deadline(delivery: Path, tmp_path: Path) -> None:
    seen: dict[str, int] = {"bytes": 0, "files": 0, "closed": 0}
    totals: list[tuple[int | None, int | None]] = []

    class Task:
        def advance(self, bytes: int = 0, files: int = 0) -> None:
            seen["bytes"] += bytes
            seen["files"] += files

        def close(self) -> None:
            seen["closed"] += 1

    class Progress:
        def task(self, description: str, total_bytes=None, total_files=None) -> Task:
            totals.append((total_bytes, total_files))
            return Task()

    module = load_step("checksum")
    ctx = StepContext(fs=WorldView(), workdir=str(tmp_path), progress=Progress())  # type: ignore[arg-type]
    module.plan({"paths": "delivery"}, ctx)
    size = sum(p.stat().st_size for p in delivery.rglob("*") if p.is_file())
    assert totals == [(size, 4)]
    assert seen == {"bytes": size, "files": 4, "closed": 1}

    ctx = StepContext(fs=WorldView(), workdir=str(tmp_path), deadline=0.0)
    with pytest.raises(StepError, match="timed out"):
        module.plan({"paths": "delivery"}, ctx)
