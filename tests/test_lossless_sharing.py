"""How masters and their proofs share cores and memory (issue 18, wsrun.packs.distillery.sharing).

A proof beside the next image's encoding gets only the core that encoding leaves
(one decoder thread, started without ``-threads``, which would hand every
code-block to a worker thread); alone it gets every core. The decoder is started
without forking wsrun when ``setpriv`` is there, and still dies with the run when
it is not. Memory kept for the next image of a loop is given back when the loop
ends or stops. Large images are compared piece by piece, and a difference in the
last piece is still found and placed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pytest
import tifffile

from conftest import write
from fixtures.jp2 import decode_pnm, need_opj_decompress
from fixtures.masters import (
    LOOP,
    PATIENCE,
    H,
    W,
    alive,
    end_encoding_ahead,
    fake_decoder,
    hanging_decoder,
    killed_during_proof,
    loop_tiffs,
    samples,
    wait_gone,
)
from wsrun.packs.distillery import lossless, sharing

#: Records its arguments, then is the real opj_decompress.
RECORDING_DECODER = """#!/bin/sh
echo "$*" >> "{log}"
exec "{real}" "$@"
"""


@pytest.fixture(autouse=True)
def _opj() -> Iterator[None]:
    need_opj_decompress()
    yield
    end_encoding_ahead()
    sharing.release_memory()


def master(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A master of 16-bit RGB noise, written by the encoder, and its samples."""
    data = samples(1)
    path = tmp_path / "m.jp2"
    path.write_bytes(lossless.encode(lossless.Pixels(data, 16)))
    return path, data


def recording_decoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put a recording opj_decompress first on PATH; returns its log."""
    real = shutil.which("opj_decompress")
    log = tmp_path / "decoder.log"
    bin_dir = fake_decoder(tmp_path, RECORDING_DECODER.format(log=log, real=real))
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return log


def test_a_proof_beside_an_encoding_gets_the_free_core_and_alone_every_core(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On two cores: alone, the decoder runs on two threads; while another job
    holds a core (the next image's encoding), on one, without ``-threads`` (a
    pool of one worker thread costs a switch per code-block). Both decode
    exactly; once the other job ends, the decoder has both cores again."""
    monkeypatch.setattr(sharing, "threads", lambda: 2)
    log = recording_decoder(tmp_path, monkeypatch)
    path, data = master(tmp_path)

    assert np.array_equal(lossless.decode_master(str(path)).samples, data)
    holding, done = threading.Event(), threading.Event()

    def encoding_ahead() -> None:
        with sharing.one_core(), sharing.cores() as n:
            assert n == 1
            holding.set()
            done.wait(PATIENCE)

    other = threading.Thread(target=encoding_ahead)
    other.start()
    try:
        assert holding.wait(PATIENCE)
        assert np.array_equal(lossless.decode_master(str(path)).samples, data)
    finally:
        done.set()
        other.join(PATIENCE)
    assert np.array_equal(lossless.decode_master(str(path)).samples, data)
    threads = [
        line.split("-threads ")[1].split()[0] if "-threads" in line else None
        for line in log.read_text().splitlines()
    ]
    assert threads == ["2", None, "2"]


def test_encodings_take_the_cores_left_to_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """The encoder's threads: every core alone, one under one_core (ahead), the
    rest beside a job holding one; the codestream is the same bytes each way."""
    monkeypatch.setattr(sharing, "threads", lambda: 2)
    asked: list[int] = []
    encode = imagecodecs.jpeg2k_encode

    def spy(*args: Any, **kwargs: Any) -> bytes:
        asked.append(kwargs["numthreads"])
        return encode(*args, **kwargs)

    monkeypatch.setattr(imagecodecs, "jpeg2k_encode", spy)
    pixels = lossless.Pixels(samples(2), 16)
    alone = lossless.encode(pixels)
    with sharing.one_core():
        ahead = lossless.encode(pixels)
    with sharing.cores() as held:
        beside = lossless.encode(pixels)
    assert (held, asked) == (2, [2, 1, 1])
    assert alone == ahead == beside


def test_the_decoder_is_started_without_forking_wsrun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With setpriv on PATH the decoder is started through it, with no code to run
    after a fork (Python then uses vfork: wsrun's memory is not made
    copy-on-write); without it, the death signal is armed after a fork."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    path, data = master(tmp_path)
    calls: list[tuple[list[str], Any]] = []
    run = subprocess.run

    def spy(args: list[str], **kwargs: Any) -> Any:
        calls.append((list(args), kwargs.get("preexec_fn")))
        return run(args, **kwargs)

    monkeypatch.setattr(subprocess, "run", spy)
    assert np.array_equal(lossless.decode_master(str(path)).samples, data)
    [(args, preexec)] = calls
    assert args[:4] == [shutil.which("setpriv"), "--pdeathsig", "KILL", "--"] and preexec is None
    assert os.path.basename(args[4]) == "opj_decompress"

    calls.clear()
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "setpriv" else which(name))
    assert np.array_equal(lossless.decode_master(str(path)).samples, data)
    [(args, preexec)] = calls
    assert os.path.basename(args[0]) == "opj_decompress" and callable(preexec)


which = shutil.which

#: A setpriv from before util-linux 2.33: no --pdeathsig.
OLD_SETPRIV = """#!/bin/sh
[ "$1" = --help ] && {{ echo "Usage: setpriv [options] <program> [<argument>...]"; exit 0; }}
echo "setpriv: unrecognized option '$1'" >&2
exit 1
"""


def test_a_setpriv_without_pdeathsig_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older setpriv that lacks --pdeathsig would fail every proof: it is left
    aside (its help does not name the option) and the decoder is forked as before."""
    path, data = master(tmp_path)
    old = tmp_path / "old" / "setpriv"
    old.parent.mkdir()
    old.write_text(OLD_SETPRIV)
    old.chmod(0o755)
    monkeypatch.setenv("PATH", f"{old.parent}:{os.environ['PATH']}")
    assert lossless._spawn_prefix()[0] == []
    assert np.array_equal(lossless.decode_master(str(path)).samples, data)


def test_without_setpriv_the_decoder_still_dies_with_the_run(tmp_path: Path) -> None:
    """No setpriv on PATH (only sleep, for the stand-in decoder): SIGKILL during
    the proof still takes the decoder along (armed after a fork instead), and no
    master is at the destination."""
    recipe = write(tmp_path / "master.yaml", LOOP)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "scan1.tif", samples(3), photometric="rgb")
    bin_dir, pidfile = hanging_decoder(tmp_path)
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "sleep").symlink_to(shutil.which("sleep") or "/bin/sleep")
    decoder = killed_during_proof(
        [str(recipe), str(tmp_path / "in"), "-q"], tmp_path, f"{bin_dir}:{tools}", pidfile
    )
    wait_gone(decoder)
    assert not alive(decoder), "the proof's decoder outlived the run"
    assert not [n for n in os.listdir(tmp_path / "masters") if n.endswith(".jp2")]


#: The loop's three TIFFs: scan1 to scan3 of samples(11) to samples(13).
SEEDS = {f"scan{i}": 10 + i for i in range(1, 4)}


def memory_log(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """keep_memory and release_memory calls, in order (each still does its work)."""
    calls: list[str] = []
    keep, release = sharing.keep_memory, sharing.release_memory

    def kept(nbytes: int) -> None:
        assert nbytes >= H * W * 3 * 2  # at least the samples' size
        calls.append("keep")
        keep(nbytes)

    def released() -> None:
        calls.append("release" if sharing._kept else "release (nothing kept)")
        release()

    monkeypatch.setattr(sharing, "keep_memory", kept)
    monkeypatch.setattr(sharing, "release_memory", released)
    return calls


def test_memory_kept_for_a_loop_is_given_back_when_it_ends(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each image encoded ahead keeps freed memory (at least its samples' size) and
    the last image's apply gives it back: nothing is kept after the run."""
    images = loop_tiffs(tmp_path, SEEDS)
    calls = memory_log(monkeypatch)
    r = cli(write(tmp_path / "loop.yaml", LOOP), tmp_path / "in")
    assert r.code == 0, r.err
    assert calls == ["keep", "keep", "release"]
    assert not sharing._kept
    for name, data in images.items():
        got, bits = decode_pnm(tmp_path / "masters" / f"{name}.jp2")
        assert bits == 16 and np.array_equal(got, data)


def test_memory_kept_for_a_loop_is_given_back_when_a_proof_fails(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """scan2's encoder changes a sample: its proof fails, the loop stops with
    scan3's encoding ahead never used, and the memory is given back all the same."""
    loop_tiffs(tmp_path, SEEDS)
    calls = memory_log(monkeypatch)
    encode = lossless.encode

    def flip_in_scan2(pixels: lossless.Pixels) -> bytes:
        if np.array_equal(pixels.samples, samples(12)):
            changed = pixels.samples.copy()
            changed[0, 0, 0] ^= 1
            pixels = lossless.Pixels(changed, pixels.bits)
        return encode(pixels)

    monkeypatch.setattr(lossless, "encode", flip_in_scan2)
    r = cli(write(tmp_path / "loop.yaml", LOOP), tmp_path / "in")
    assert r.code == 1 and "lossless proof failed" in r.err, r.err
    assert calls[-1] == "release" and "keep" in calls and not sharing._kept
    assert sorted(os.listdir(tmp_path / "masters")) == ["scan1.jp2"]


def test_a_difference_in_the_last_piece_of_a_large_image_is_found() -> None:
    """compare() reads large images about 1 MiB at a time; one sample changed in
    the last row of a 12 MB image is found, counted and placed, and an equal copy
    passes."""
    source = np.random.default_rng(5).integers(0, 1 << 16, (1000, 2000, 3), dtype=np.uint16)
    same = source.copy()
    lossless.compare(lossless.Pixels(source, 16), lossless.Pixels(same, 16))
    same[999, 1234, 2] ^= 0x100
    with pytest.raises(lossless.ProofFailed) as failed:
        lossless.compare(lossless.Pixels(source, 16), lossless.Pixels(same, 16))
    assert str(failed.value).startswith(
        f"1 of {source.size} samples differ (first at row 999, column 1234, component 2: "
        f"{source[999, 1234, 2]} in the source, {same[999, 1234, 2]} in the master)"
    )


#: Runs a recipe, then says what it imported: jsonschema, and Pillow's image plugins.
IMPORTS = """
import json, sys
from wsrun.cli.main import main
code = main(sys.argv[1:])
plugins = sorted(m for m in sys.modules if m.startswith("PIL.") and m.endswith("ImagePlugin"))
print(json.dumps([code, "jsonschema" in sys.modules, plugins]))
"""


def test_a_run_of_masters_spends_no_start_up_on_jsonschema_or_pillows_other_plugins(
    tmp_path: Path,
) -> None:
    """The serial start of a one-image run: once its recipe was checked, a run imports
    no jsonschema (the derivatives an expression yields are judged obviously valid),
    and reading the TIFF's header imports Pillow's TIFF plugin and its five common
    ones, not all sixty. Both runs write and prove their master."""
    recipe = write(tmp_path / "masters.yaml", LOOP)
    source = tmp_path / "tiffs"
    source.mkdir()
    tifffile.imwrite(source / "a.tif", samples(3))
    runs = []
    for name in ("first", "second"):
        where = tmp_path / name
        where.mkdir()
        done = subprocess.run(
            [sys.executable, "-c", IMPORTS, str(recipe), str(source), "-q"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=PATIENCE,
        )
        assert done.returncode == 0, done.stderr
        runs.append(json.loads(done.stdout.splitlines()[-1]))
        assert (where / "masters" / "a.jp2").is_file()
    (code, checked, _), (code2, imported, plugins) = runs
    assert code == code2 == 0 and checked  # the first run checks the recipe
    assert not imported
    common = {"Bmp", "Gif", "Jpeg", "Ppm", "Png", "Tiff"}
    assert "PIL.TiffImagePlugin" in plugins
    assert set(plugins) <= {f"PIL.{name}ImagePlugin" for name in common}, plugins
