"""The ``rsync`` step type: synchronise a directory tree with the real rsync program.

One piece: planning (rsync's own dry run, parsed), applying and the checks of what
rsync reported belong together: the plan is rsync's itemized list, and apply holds
the real run to exactly that list.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import os
import re
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from wsrun.core.effects import Effect, create_dir, create_file, create_symlink, remove
from wsrun.core.fs import ContentUnknown, FileInfo, WorldView
from wsrun.core.procs import death_signal
from wsrun.core.step import Plan, Result, StepContext, StepError

NAME = "rsync"
DOC = """Synchronise a file or directory tree into a directory with rsync, sending only what changed.

Use it for large deliveries and mirrors where rsync's delta transfer, its
``--delete`` and its exclude rules are wanted, or where operators expect
rsync's exact behaviour. ``source`` follows rsync's trailing-slash rule:
``products/run42/`` copies the *contents* of run42 into ``to``, while
``products/run42`` copies the directory itself, to ``to/run42``. ``to`` is
always a directory; it and its missing parents are created. Both are local
paths, relative to the recipe's workdir.

The plan runs ``rsync --dry-run --itemize-changes`` (which changes nothing) and
reports what it lists: new directories, files written (new or changed),
symlinks made and paths deleted. A tree whose content is in place is ``ok``
and rsync is not run: attribute-only differences (rsync's lines starting with
``.``, such as a permission change or a directory's mtime) are not effects;
rsync fixes them whenever it runs for a content change. The real run reports
what rsync did, which equals the plan unless the tree changed in between.

In a wsrun dry run whose source exists only because an earlier step would
create it, rsync has nothing to look at; the plan is then computed from the
planned tree instead: size and mtime (or content, with ``checksum``) against the
destination, ``exclude`` patterns matched with shell wildcards against a name
or its path, and ``options`` ignored. A source that is on disk is always
planned by rsync, so a dry run does not see changes earlier steps would make
inside it.

rsync writes each file under a temporary name and renames it into place, and
removes that temporary file when it is stopped, so a failed or timed-out run
leaves only whole files; re-running it sends what is still missing.
"""

#: rsync's exit codes (man rsync, EXIT VALUES).
EXIT_CODES = {
    1: "syntax or usage error",
    2: "protocol incompatibility",
    3: "errors selecting input/output files, dirs",
    4: "requested action not supported",
    5: "error starting client-server protocol",
    6: "daemon unable to append to log-file",
    10: "error in socket I/O",
    11: "error in file I/O",
    12: "error in rsync protocol data stream",
    13: "errors with program diagnostics",
    14: "error in IPC code",
    15: "sibling process crashed",
    16: "sibling process was killed by a signal",
    19: "received SIGUSR1",
    20: "received SIGINT, SIGTERM, or SIGHUP",
    21: "some error returned by waitpid()",
    22: "error allocating core memory buffers",
    23: "partial transfer due to error",
    24: "partial transfer due to vanished source files",
    25: "the --max-delete limit stopped deletions",
    30: "timeout in data send/receive",
    35: "timeout waiting for daemon connection",
}
#: Exit codes of a lost or timed-out connection: worth trying again later.
NETWORK_EXIT_CODES = frozenset({10, 12, 30, 35})

#: One line per item: rsync's 11-character change summary, the size, the name.
OUT_FORMAT = "%i|%l|%n"
_LINE = re.compile(rb"([<>ch.*][fdLDS*][^|]{9})\|(\d+)\|(.+)")
_ESCAPE = re.compile(rb"\\#([0-7]{3})")

#: Options that would make rsync change nothing or print what cannot be parsed.
FORBIDDEN_OPTIONS = {
    "-n": "the plan already runs rsync with --dry-run; use wsrun's dry run",
    "--dry-run": "the plan already runs rsync with --dry-run; use wsrun's dry run",
    "--list-only": "it copies nothing",
    "-q": "it hides the list of changes the step reports",
    "--quiet": "it hides the list of changes the step reports",
    "--out-format": "the step sets its own output format",
    "--log-format": "the step sets its own output format",
    "--info": "it changes the output the step reads",
    "--progress": "it changes the output the step reads; wsrun shows progress itself",
    "-P": "it changes the output the step reads; wsrun shows progress itself",
    "--remove-source-files": "it deletes source files the step cannot report; "
    "use a remove step afterwards",
}

#: Seconds rsync gets to remove its temporary file after a timeout before it is killed.
STOP_GRACE = 5.0

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["source", "to"],
    "properties": {
        "source": {
            "description": "The file or directory to synchronise. With a trailing slash the "
            "directory's contents go into `to`; without one the directory itself does "
            "(rsync's rule).",
            "type": "string",
            "minLength": 1,
            "examples": ["products/run42/", "products/run42"],
        },
        "to": {
            "description": "The destination directory (created with its parents if missing).",
            "type": "string",
            "minLength": 1,
            "examples": ["/archive/incoming/{{ inputs.project }}"],
        },
        "archive": {
            "description": "Preserve times, permissions, symlinks and devices (rsync -a). When "
            "false only content is copied (rsync -r); without preserved times every file is "
            "sent again on each run unless `checksum` is true.",
            "type": "boolean",
            "default": True,
        },
        "delete": {
            "description": "Delete files in the destination that are not in the source "
            "(rsync --delete; excluded files are kept).",
            "type": "boolean",
            "default": False,
        },
        "checksum": {
            "description": "Decide what changed by content checksum instead of size and mtime "
            "(rsync -c; reads every file on both sides).",
            "type": "boolean",
            "default": False,
        },
        "exclude": {
            "description": "rsync exclude patterns (--exclude), e.g. `*.tmp` or `scratch/`.",
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "examples": [["*.tmp", "scratch/"]],
        },
        "options": {
            "description": "Extra rsync options, each one word with its value joined by `=` "
            "(e.g. `--bwlimit=50M`). --dry-run/-n and options that change rsync's output "
            "(-q, -P, --progress, --info, --out-format) are refused.",
            "type": "array",
            "items": {"type": "string", "pattern": "^-"},
            "examples": [["--bwlimit=50M", "--hard-links"]],
        },
        "rsync": {
            "description": "The rsync program to run: a name looked up on PATH or a path.",
            "type": "string",
            "minLength": 1,
            "default": "rsync",
            "examples": ["/usr/local/bin/rsync"],
        },
    },
}

EXAMPLES = [
    """- id: mirror
  uses: rsync
  with:
    source: products/run42/
    to: /archive/incoming/run42
    delete: true
    exclude: ["*.tmp", scratch/]
""",
    """- id: deliver
  uses: rsync
  with:
    source: staging/{{ inputs.user }}
    to: /data/delivery
    checksum: true
    options: [--bwlimit=100M]
""",
]

OUTPUTS = {
    "files": "destination paths of the files written (new or changed)",
    "bytes": "total size of those files",
    "deleted": "destination paths deleted (with `delete`)",
}


@dataclass
class Transfer:
    """What apply runs, decided at plan time."""

    args: list[str]  # the rsync command, without --dry-run
    source: str
    base: str  # the directory rsync's item names are relative to on the source side
    to: str
    new_dirs: list[str]  # `to` and its missing parents, created before rsync runs


def destinations(params: dict[str, Any], ctx: StepContext) -> list[str]:
    """The paths this step writes, locked (wsrun.core.locks) before it plans: the
    source's place under ``to`` (so runs replicating other things into one
    cache do not wait for each other), or ``to`` when the source's contents go
    there."""
    raw_source: str = params["source"]
    to = ctx.path(params["to"])
    if raw_source.endswith("/") or os.path.basename(raw_source) in (".", ".."):
        return [to]
    return [os.path.join(to, os.path.basename(ctx.path(raw_source)))]


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    raw_source: str = params["source"]
    source = ctx.path(raw_source)
    to = ctx.path(params["to"])
    options: list[str] = params.get("options", [])
    for option in options:
        _check_option(option)
    # rsync's rule: "dir/" (or "dir/.") names the contents, "dir" the directory itself.
    contents = raw_source.endswith("/") or os.path.basename(raw_source) in (".", "..")
    if ctx.fs.lstat(source) is None:
        raise StepError("source does not exist", path=source)
    to_info = ctx.fs.stat(to)
    if to_info is not None and not to_info.is_dir:
        raise StepError("destination is not a directory", path=to)

    new_dirs: list[str] = []
    path = to
    while ctx.fs.lstat(path) is None:
        new_dirs.insert(0, path)
        path = os.path.dirname(path)
    archive = params.get("archive", True)
    args = [params.get("rsync", "rsync"), "-8", "--itemize-changes", f"--out-format={OUT_FORMAT}"]
    args.append("-a" if archive else "-r")
    if params.get("checksum", False):
        args.append("-c")
    if params.get("delete", False):
        args.append("--delete")
    args += [f"--exclude={pattern}" for pattern in params.get("exclude", [])]
    args += options
    args += [source + "/" if contents else source, to + "/"]
    transfer = Transfer(
        args=args,
        source=source,
        base=source if contents else os.path.dirname(source),
        to=to,
        new_dirs=new_dirs,
    )

    if ctx.dry_run and not os.path.lexists(source):
        # The source is only planned by an earlier step: compare the planned trees.
        effects = _plan_from_view(transfer, params, ctx)
    else:
        dry_run = [args[0], "--dry-run", *args[1:]]

        def link_target(source_path: str) -> str | None:
            info = ctx.fs.lstat(source_path)
            return info.target if info is not None else None

        items = _parse(_rsync(dry_run, transfer.source, ctx), transfer, link_target)
        # In a dry run an earlier step may already plan a directory rsync sees missing.
        effects = [e for e in items if not (e.op == "create_dir" and ctx.fs.is_dir(e.path))]
    effects = _ordered([create_dir(d) for d in new_dirs] + effects)
    return Plan(effects=effects, outputs=_outputs(effects), data=transfer)


def apply(plan: Plan, ctx: StepContext) -> Result:
    transfer: Transfer = plan.data
    if not plan.effects:
        return Result(outputs=plan.outputs)
    for d in transfer.new_dirs:
        os.makedirs(d, exist_ok=True)
    files = [e for e in plan.effects if e.op == "create_file"]
    task = ctx.progress.task(
        "rsync", total_bytes=sum(e.bytes or 0 for e in files), total_files=len(files)
    )
    effects: list[Effect] = [create_dir(d) for d in transfer.new_dirs]

    def on_effect(effect: Effect) -> None:
        effects.append(effect)
        if effect.op == "create_file":
            task.advance(bytes=effect.bytes or 0, files=1)

    try:
        _rsync(
            transfer.args,
            transfer.source,
            ctx,
            lambda line: _parse_line(line, transfer, _readlink, on_effect),
        )
    except BaseException:
        _remove_rsync_temps(files)
        raise
    finally:
        task.close()
    effects = _ordered(effects)
    return Result(effects=effects, outputs=_outputs(effects))


def _remove_rsync_temps(files: list[Effect]) -> None:
    """Remove the temporary files (``.name.XXXXXX`` beside each target) that a
    stopped rsync's receiver process may not have cleaned up in time."""
    for effect in files:
        head, tail = os.path.split(effect.path)
        for leftover in glob.glob(os.path.join(glob.escape(head), f".{glob.escape(tail)}.??????")):
            with contextlib.suppress(OSError):
                os.unlink(leftover)


def _check_option(option: str) -> None:
    name = option.split("=", 1)[0]
    reason = FORBIDDEN_OPTIONS.get(name)
    if reason is None and re.fullmatch(r"-[A-Za-z]+", option):
        # A cluster of short flags such as -avn.
        reason = next((FORBIDDEN_OPTIONS[f"-{c}"] for c in "nqP" if c in option[1:]), None)
    if reason is not None:
        raise StepError(f"option {option} is not allowed here: {reason}", path=option)


def _readlink(source_path: str) -> str | None:
    try:
        return os.readlink(source_path)
    except OSError:
        return None


def _rsync(
    args: list[str],
    source: str,
    ctx: StepContext,
    on_line: Callable[[bytes], None] | None = None,
) -> list[bytes]:
    """Run rsync in its own process group, calling ``on_line`` with each line of
    its output as it comes (for progress); returns the lines. A timeout stops
    rsync with SIGTERM, which makes it remove its temporary file."""
    lines: list[bytes] = []
    timeout = ctx.remaining()
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(
                args,
                env=dict(ctx.env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
                # Killed with wsrun (SIGTERM: rsync then removes its temporary file).
                preexec_fn=death_signal(signal.SIGTERM),
            )
        except FileNotFoundError:
            raise StepError(
                "program not found (install rsync or give its path in `rsync`)", path=args[0]
            ) from None
        timed_out = threading.Event()

        def stop_at_deadline() -> None:
            timed_out.set()
            _stop(proc)

        timer = threading.Timer(timeout, stop_at_deadline) if timeout is not None else None
        if timer is not None:
            timer.start()
        try:
            assert proc.stdout is not None
            with proc.stdout:
                for line in proc.stdout:
                    line = line.rstrip(b"\n")
                    lines.append(line)
                    if on_line is not None:
                        on_line(line)
            proc.wait()
        except BaseException:
            _stop(proc)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if timed_out.is_set():
            raise StepError(
                f"timed out after {round(timeout or 0, 1):g} s", path=source, transient=True
            )
        if proc.returncode != 0:
            raise StepError(
                _failure(proc.returncode, err),
                path=source,
                transient=proc.returncode in NETWORK_EXIT_CODES,
            )
    return lines


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop rsync so that it removes its temporary file.

    Only the main process gets SIGTERM: it passes the signal on to its helper
    processes and waits for their clean-up (signalling them all at once races
    with it). Whatever lingers after the grace period is killed.
    """
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_GRACE)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _failure(returncode: int, err: IO[bytes]) -> str:
    """One line: the exit code, its meaning, and rsync's last word on the cause."""
    err.seek(0)
    lines = [line.strip() for line in err.read().decode(errors="replace").splitlines()]
    lines = [line for line in lines if line]
    # The last line is usually the generic "rsync error: ... (code 23)"; the cause precedes it.
    causes = [line for line in lines if not line.startswith("rsync error:")] or lines
    meaning = EXIT_CODES.get(returncode, "unknown error")
    message = f"rsync failed with exit code {returncode} ({meaning})"
    return f"{message}: {causes[-1]}" if causes else message


def _parse(
    lines: list[bytes], t: Transfer, link_target: Callable[[str], str | None]
) -> list[Effect]:
    effects: list[Effect] = []
    for line in lines:
        _parse_line(line, t, link_target, effects.append)
    return effects


def _parse_line(
    line: bytes,
    t: Transfer,
    link_target: Callable[[str], str | None],
    emit: Callable[[Effect], None],
) -> None:
    """Turn one line of rsync's itemized output into an effect, if it is one.

    Other lines (such as "created directory ...") and attribute-only updates
    (summary starting with ".") are ignored, as is the destination itself.
    """
    m = _LINE.fullmatch(line)
    if m is None:
        return
    summary = m[1].decode()
    name = os.fsdecode(_ESCAPE.sub(lambda e: bytes([int(e[1], 8)]), m[3])).rstrip("/")
    dest = os.path.normpath(os.path.join(t.to, name))
    source = os.path.normpath(os.path.join(t.base, name))
    if dest == t.to or summary.startswith("."):
        return
    if summary.startswith("*deleting"):
        emit(remove(dest))
    elif summary[1] == "d":
        emit(create_dir(dest))
    elif summary[1] == "L":
        emit(create_symlink(dest, link_target(source) or ""))
    else:
        emit(create_file(dest, bytes=int(m[2]), source=source))


def _ordered(effects: list[Effect]) -> list[Effect]:
    """Deletions first, deepest first; then creations, parents before children.
    A fixed order makes the plan comparable with what rsync reports doing."""
    removals = sorted((e for e in effects if e.op == "remove"), key=lambda e: e.path, reverse=True)
    others = sorted((e for e in effects if e.op != "remove"), key=lambda e: e.path.split(os.sep))
    return removals + others


def _outputs(effects: list[Effect]) -> dict[str, Any]:
    files = [e for e in effects if e.op == "create_file"]
    return {
        "files": [e.path for e in files],
        "bytes": sum(e.bytes or 0 for e in files),
        "deleted": [e.path for e in effects if e.op == "remove"],
    }


# ---- dry run over planned files ------------------------------------------------


def _plan_from_view(t: Transfer, params: dict[str, Any], ctx: StepContext) -> list[Effect]:
    """What rsync would do, computed from ``ctx.fs`` (the disk plus earlier
    planned effects) when the source exists only as a plan."""
    fs = ctx.fs
    patterns: list[str] = params.get("exclude", [])
    archive = params.get("archive", True)
    checksum = params.get("checksum", False)
    # rsync's item names: relative to the source's contents, or starting with its name.
    root = "" if t.base == t.source else os.path.basename(t.source)
    source_info = fs.lstat(t.source)
    assert source_info is not None
    entries: list[tuple[str, FileInfo]] = [(root, source_info)] if root else []
    if source_info.is_dir or (not root and fs.is_dir(t.source)):
        entries += [(os.path.join(root, rel), info) for rel, info in fs.walk(t.source)]
    entries = _not_excluded(entries, patterns)

    effects: list[Effect] = []
    for name, info in entries:
        dest = os.path.join(t.to, name)
        have = fs.lstat(dest)
        if info.is_dir:
            if have is None or not have.is_dir:
                effects.append(create_dir(dest))
        elif info.is_symlink:
            if archive and (have is None or not have.is_symlink or have.target != info.target):
                effects.append(create_symlink(dest, info.target or ""))
        elif info.is_file or archive:
            source = os.path.join(t.base, name)
            if not _same_file(fs, source, info, dest, have, checksum):
                # A file an earlier step only declares (shell's `creates`) has no known size.
                known = info.content is not None or info.content_from is not None
                effects.append(create_file(dest, bytes=info.size if known else None, source=source))

    if params.get("delete", False) and fs.is_dir(t.source):
        wanted = {name for name, _ in entries}
        top = os.path.join(t.to, root) if root else t.to
        present = [(os.path.join(root, rel), info) for rel, info in fs.walk(top)]
        for name, _ in _not_excluded(present, patterns):
            if name not in wanted:
                effects.append(remove(os.path.join(t.to, name)))
    return effects


def _not_excluded(
    entries: list[tuple[str, FileInfo]], patterns: list[str]
) -> list[tuple[str, FileInfo]]:
    """The entries no pattern excludes, nor any of their parent directories."""
    kept = []
    excluded_dirs: list[str] = []
    for name, info in entries:
        if any(name.startswith(d + os.sep) for d in excluded_dirs):
            continue
        if any(_matches(p, name, info.is_dir) for p in patterns):
            if info.is_dir:
                excluded_dirs.append(name)
            continue
        kept.append((name, info))
    return kept


def _matches(pattern: str, name: str, is_dir: bool) -> bool:
    """A simplified rsync pattern match: a trailing "/" matches directories only;
    a pattern with a "/" matches the path from the transfer's root, one without
    matches the last component."""
    if pattern.endswith("/"):
        if not is_dir:
            return False
        pattern = pattern.rstrip("/")
    if "/" in pattern:
        return fnmatch.fnmatchcase(name, pattern.lstrip("/"))
    return fnmatch.fnmatchcase(os.path.basename(name), pattern)


def _same_file(
    fs: WorldView, source: str, info: FileInfo, dest: str, have: FileInfo | None, checksum: bool
) -> bool:
    """rsync's quick check (size and mtime), or size and content with ``checksum``."""
    if have is None or not have.is_file or have.size != info.size:
        return False
    if not checksum:
        return have.mtime_ns == info.mtime_ns
    try:
        with fs.open(source) as a, fs.open(dest) as b:
            while True:
                chunk = a.read(1 << 20)
                if chunk != b.read(1 << 20):
                    return False
                if not chunk:
                    return True
    except ContentUnknown:
        return False
