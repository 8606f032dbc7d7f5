"""The ``image-derivative`` step through recipes: lossless proof, access copies, metadata."""

from __future__ import annotations

import array
import hashlib
import json
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import as_planned, snapshot, write
from fixtures.jp2 import checksum, decode_pnm, need_opj_decompress
from wsrun.packs.distillery import xmp

METADATA = {
    "title": "Letter to R. Millikan, 1921 — ünïcode",
    "identifier": "MS01_001_0001",
    "source": "Caltech Archives, MS01 box 1 folder 1",
    "publisher": "Caltech Archives and Special Collections",
    "rights": "Copyright California Institute of Technology",
}

RECIPE = """
recipe: derive
inputs:
  source: {type: path, positional: true}
  name: {type: string}
  title: {type: string, default: "Letter to R. Millikan, 1921 — ünïcode"}
steps:
  - id: derive
    uses: image-derivative
    with:
      source: "{{ inputs.source }}"
      derivatives:
        - {to: "preservation/{{ inputs.name }}.jp2", lossless: true}
        - {to: "access/{{ inputs.name }}.jp2", ratio: 20}
        - {to: "access/{{ inputs.name }}.jpg", quality: 80, max_size: 120}
        - {to: "access/{{ inputs.name }}-thumb.jpg", max_size: 40}
      metadata:
        title: "{{ inputs.title }}"
        identifier: MS01_001_0001
        source: Caltech Archives, MS01 box 1 folder 1
        publisher: Caltech Archives and Special Collections
        rights: Copyright California Institute of Technology
outputs:
  derivatives: "{{ steps.derive.outputs.derivatives }}"
  proofs: "{{ steps.derive.outputs.proofs }}"
  size: "{{ [steps.derive.outputs.width, steps.derive.outputs.height, steps.derive.outputs.mode] }}"
"""


def rgb_tiff(path: Path, width: int = 200, height: int = 150) -> Path:
    """An 8-bit RGB TIFF of seeded noise and gradients (noise defeats any lossy shortcut)."""
    rng = random.Random(7)
    image = Image.new("RGB", (width, height))
    image.putdata(
        [(rng.randrange(256), (i // width) % 256, (i * 3) % 256) for i in range(width * height)]
    )
    image.save(path)
    return path


def gray16_tiff(path: Path, width: int = 160, height: int = 100) -> Path:
    """A 16-bit grayscale TIFF using the whole 0-65535 range."""
    rng = random.Random(16)
    image = Image.new("I;16", (width, height))
    image.putdata([rng.randrange(65536) for _ in range(width * height)])
    image.save(path)
    return path


def run_json(cli: Any, *args: Any) -> dict[str, Any]:
    r = cli(*args, "--json")
    assert r.code == 0, r.err + r.out
    return json.loads(r.out)


def effects(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for s in doc["steps"] for e in s["effects"]]


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    need_opj_decompress()  # the lossless proof's decoder
    return write(tmp_path / "derive.yaml", RECIPE)


def gray16_big_endian_tiff(path: Path) -> Path:
    """The same in Motorola byte order, as TIFFs from Macs often are."""
    gray16_tiff(path)
    with Image.open(path) as little:
        little.load()
        big = Image.frombytes("I;16B", little.size, little.tobytes("raw", "I;16B"))
    big.save(path)
    return path


@pytest.mark.parametrize(
    ("make", "mode"),
    [(rgb_tiff, "RGB"), (gray16_tiff, "I;16"), (gray16_big_endian_tiff, "I;16B")],
    ids=["rgb8", "gray16", "gray16-big-endian"],
)
def test_lossless_master_and_access_copies(
    cli: Any, tmp_path: Path, recipe: Path, make: Any, mode: str
) -> None:
    source = make(tmp_path / "scan.tif")
    with Image.open(source) as original:
        original.load()
        assert original.mode == mode
        width, height = original.size
        pixels = original.tobytes()
    bits = 16 if mode.startswith("I;16") else 8
    samples = np.frombuffer(pixels, dtype={"I;16": "<u2", "I;16B": ">u2"}.get(mode, "u1"))
    want = checksum(samples.reshape(height, width, -1), bits)
    if mode == "I;16B":  # the JPEG 2000 decodes to little-endian I;16: the same values
        swapped = array.array("H", pixels)
        swapped.byteswap()
        pixels = swapped.tobytes()
    doc = run_json(cli, recipe, source, "--name", "0001")
    assert doc["status"] == "changed"
    out = doc["outputs"]
    assert out["size"] == [width, height, mode]
    master = tmp_path / "preservation" / "0001.jp2"
    assert out["proofs"] == [
        {
            "path": str(master),
            "source_pixels": want,
            "derivative_pixels": want,
            "depth": f"{bits}-bit {'RGB' if mode == 'RGB' else 'gray'} {width}x{height}",
            "lossless": True,
        }
    ]
    # Decoded independently of the step: the master holds exactly the TIFF's pixels.
    with Image.open(master) as decoded:
        assert decoded.format == "JPEG2000"
        assert decoded.size == (width, height)
        assert decoded.tobytes() == pixels
    decoded_samples, depth = decode_pnm(master)
    assert depth == bits and checksum(decoded_samples, depth) == want
    access = tmp_path / "access"
    assert master.stat().st_size > (access / "0001.jp2").stat().st_size
    sizes = {}
    for name in ("0001.jp2", "0001.jpg", "0001-thumb.jpg"):
        with Image.open(access / name) as image:
            sizes[name] = image.size
            if name.endswith(".jpg"):
                assert image.format == "JPEG" and image.mode in ("RGB", "L")
    longest = max(width, height)
    assert sizes == {
        "0001.jp2": (width, height),
        "0001.jpg": (round(width * 120 / longest), round(height * 120 / longest)),
        "0001-thumb.jpg": (round(width * 40 / longest), round(height * 40 / longest)),
    }
    assert [(d["path"], d["width"], d["height"], d["bytes"]) for d in out["derivatives"]] == [
        (str(master), width, height, master.stat().st_size),
        *[
            (str(access / n), *sizes[n], (access / n).stat().st_size)
            for n in ("0001.jp2", "0001.jpg", "0001-thumb.jpg")
        ],
    ]
    assert not [p for p in tmp_path.rglob("*") if ".wsrun-tmp" in p.name]


def test_a_lossy_setting_on_a_lossless_master_is_refused_before_writing(
    cli: Any, tmp_path: Path, recipe: Path
) -> None:
    source = rgb_tiff(tmp_path / "scan.tif")
    # A rate limit makes even the reversible wavelet lossy (the proof would fail after
    # encoding; tests/test_lossless_proof.py has those mutations): refused up front.
    lossy = write(
        tmp_path / "lossy.yaml",
        RECIPE.replace("lossless: true}", "lossless: true, ratio: 8}"),
    )
    r = cli(lossy, source, "--name", "0001")
    assert r.code != 0
    [line] = [ln for ln in r.err.splitlines() if "cannot have a ratio" in ln]
    assert str(tmp_path / "preservation" / "0001.jp2") in line
    assert not (tmp_path / "preservation").exists()


def test_metadata_reads_back(cli: Any, tmp_path: Path, recipe: Path) -> None:
    source = rgb_tiff(tmp_path / "scan.tif")
    run_json(cli, recipe, source, "--name", "0001")
    for path in ("preservation/0001.jp2", "access/0001.jp2", "access/0001.jpg"):
        fields = xmp.parse_xmp(xmp.read_xmp(str(tmp_path / path)) or b"")
        assert {k: fields[k] for k in METADATA} == METADATA, path
    # Pillow finds the JPEG's XMP segment where every XMP reader looks for it.
    with Image.open(tmp_path / "access/0001.jpg") as jpeg:
        assert xmp.parse_xmp(jpeg.info["xmp"])["identifier"] == "MS01_001_0001"


def test_exiftool_reads_the_metadata(cli: Any, tmp_path: Path, recipe: Path) -> None:
    if shutil.which("exiftool") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("exiftool is missing (make tools)")
        pytest.skip("exiftool is not installed (make tools)")
    source = gray16_tiff(tmp_path / "scan.tif")
    run_json(cli, recipe, source, "--name", "0001")
    for path in ("preservation/0001.jp2", "access/0001-thumb.jpg"):
        done = subprocess.run(
            ["exiftool", "-j", "-XMP-dc:all", str(tmp_path / path)],
            capture_output=True,
            text=True,
            check=True,
        )
        [tags] = json.loads(done.stdout)
        assert {k.lower(): tags[k.capitalize()] for k in METADATA} == METADATA, path


def test_second_run_changes_nothing_and_reports_the_same_proof(
    cli: Any, tmp_path: Path, recipe: Path
) -> None:
    source = rgb_tiff(tmp_path / "scan.tif")
    first = run_json(cli, recipe, source, "--name", "0001")
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.j*")}
    again = run_json(cli, recipe, source, "--name", "0001")
    assert again["status"] == "ok" and effects(again) == []
    assert again["outputs"] == first["outputs"]
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.j*")} == before
    # New metadata makes every derivative stale.
    changed = run_json(cli, recipe, source, "--name", "0001", "--title", "Another title")
    assert [e["path"] for e in effects(changed)] == [
        str(tmp_path / p)
        for p in (
            "preservation/0001.jp2",
            "access/0001.jp2",
            "access/0001.jpg",
            "access/0001-thumb.jpg",
        )
    ]


def test_dry_run_prints_the_effects_the_real_run_performs(
    cli: Any, tmp_path: Path, recipe: Path
) -> None:
    source = gray16_tiff(tmp_path / "scan.tif")
    before = snapshot(tmp_path)
    dry = run_json(cli, recipe, source, "--name", "0001", "--dry-run")
    assert snapshot(tmp_path) == before
    assert dry["outputs"]["proofs"][0]["source_pixels"] is None
    real = run_json(cli, recipe, source, "--name", "0001")
    # The plan cannot know what the encoder writes; the run reports its size and sha256.
    assert [as_planned(d, p) for p, d in zip(effects(dry), effects(real), strict=True)] == (
        effects(dry)
    )
    assert [e["op"] for e in effects(real)] == ["create_dir", "create_file", "create_dir"] + [
        "create_file"
    ] * 3
    planned = [e for e in effects(dry) if e["op"] == "create_file"]
    assert all("bytes" not in e and "sha256" not in e for e in planned)
    created = [e for e in effects(real) if e["op"] == "create_file"]
    assert all(e["derived_from"] == str(source) for e in created)
    for e in created:
        data = Path(e["path"]).read_bytes()
        assert (e["bytes"], e["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())


def test_not_a_tiff_is_a_clear_error(cli: Any, tmp_path: Path, recipe: Path) -> None:
    png = tmp_path / "scan.png"
    Image.new("RGB", (8, 8)).save(png)
    r = cli(recipe, png, "--name", "0001")
    assert r.code != 0 and "is PNG, not a TIFF" in r.err
    r = cli(recipe, tmp_path / "missing.tif", "--name", "0001")
    assert r.code != 0 and "source image does not exist" in r.err
