"""The ``shell`` step type: run one program with an argument list."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import IO, Any

from wsrun.core.effects import Effect, create_dir, create_file, remove
from wsrun.core.step import Plan, Result, StepContext, StepError

NAME = "shell"
DOC = """Run a program the built-in steps do not cover, with an argument list (never a shell string).

The escape hatch for tools such as a format converter or a site's archive
client. ``argv`` goes straight to the program, so no quoting, globbing or
injection can happen; wrap in ``["sh", "-c", "..."]`` only when a shell is
really needed. wsrun cannot know what a program does, so the recipe author
declares it: ``creates`` and ``removes`` become the step's effects, and when
every ``creates`` path already exists the step is skipped (status ``ok``), as
Ansible's ``creates`` does. Paths are relative to the recipe's workdir, like
every path in wsrun; end a ``creates`` path with ``/`` to declare a directory.

A dry run never starts the program; it prints the command and its declared
effects. A failed run (bad exit code or timeout) removes the declared
``creates`` paths that did not exist before it, so no half-written output is
left behind. ``env`` values are treated as secrets: they never appear in
effects, outputs or logs, and values of 4 or more characters are masked as
``***`` in the captured output and in error messages. Under ``wsrun
worker`` a failure is permanent (the message goes dead at once) unless the
program exits with 75 (``EX_TEMPFAIL``, "try again later") or times out:
those are retried with back-off.
"""

#: Captured output beyond this many bytes per stream is cut from the front.
CAPTURE_LIMIT = 64 * 1024
#: Shorter ``env`` values are not masked: masking "1" or "C" would garble the output.
MASK_MIN_LENGTH = 4
#: Seconds a timed-out program gets to clean up after SIGTERM before SIGKILL.
STOP_GRACE = 5.0
#: sysexits.h's "temporary failure, try again later": the one exit code that
#: makes a failure transient (``wsrun worker`` retries it; others go dead).
EX_TEMPFAIL = 75

_PATHS: dict[str, Any] = {
    "oneOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string", "minLength": 1}},
    ]
}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["argv"],
    "properties": {
        "argv": {
            "description": "The program and its arguments as a list of strings, passed to the "
            "program as they are (no shell). A plain string is rejected: write "
            '["tar", "-xf", "in.tar"], not "tar -xf in.tar". Quote numbers ("-9", "0755"): '
            "YAML would read them as numbers, and 0755 as 493.",
            # A string gets an error that says what to write instead.
            "if": {"type": "string"},
            "then": {
                "const": 'a list such as ["tar", "-xf", "in.tar"] (one string per '
                "argument; a shell command string is not accepted)"
            },
            "else": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "examples": [["gzip", "-9", "products/run42.fits"], ["sh", "-c", "make -C tools"]],
        },
        "env": {
            "description": "Extra environment variables. Their values are never shown in "
            "effects, outputs or logs.",
            "type": "object",
            "additionalProperties": {"type": "string"},
            "examples": [{"ARCHIVE_TOKEN": "{{ settings.archive_token }}"}],
        },
        "inherit_env": {
            "description": "Start from wsrun's own environment (true) or from `env` alone "
            "(false; the program is then looked up in env.PATH or /bin:/usr/bin).",
            "type": "boolean",
            "default": True,
        },
        "cwd": {
            "description": "Working directory of the program (default: the recipe's workdir).",
            "type": "string",
            "minLength": 1,
            "examples": ["products/run42"],
        },
        "stdin": {
            "description": "Text written to the program's standard input (default: none; the "
            "program reads end-of-file).",
            "type": "string",
        },
        "creates": {
            "description": "A path or list of paths the program creates. They are the step's "
            "effects, and when all of them exist the program is not run. End a path with `/` "
            "for a directory.",
            **_PATHS,
            "examples": ["products/run42.fits.gz", ["out/report.pdf", "out/plots/"]],
        },
        "removes": {
            "description": "A path or list of paths the program deletes; reported as effects "
            "and checked to be gone afterwards.",
            **_PATHS,
            "examples": ["products/run42.fits"],
        },
        "ok_codes": {
            "description": "Exit codes that count as success.",
            "type": "array",
            "items": {"type": "integer"},
            "minItems": 1,
            "default": [0],
            "examples": [[0, 1]],
        },
        "capture": {
            "description": "Capture standard output and error as the `stdout` and `stderr` "
            f"outputs (at most the last {CAPTURE_LIMIT // 1024} KiB of each). When false they "
            "go to wsrun's own output.",
            "type": "boolean",
            "default": True,
        },
    },
}

EXAMPLES = [
    """- id: compress
  uses: shell
  with:
    argv: [gzip, "-9", products/run42.fits]
    creates: products/run42.fits.gz
    removes: products/run42.fits
""",
    """- id: ingest
  uses: shell
  with:
    argv: [archive-client, ingest, --project, "{{ inputs.project }}", staging/]
    env: {ARCHIVE_TOKEN: "{{ settings.archive_token }}"}
    ok_codes: [0, 3]
""",
]

OUTPUTS = {
    "returncode": "the program's exit code (null when it was not run)",
    "stdout": "its standard output, the last 64 KiB at most (null when not run or not captured)",
    "stderr": "its standard error, the last 64 KiB at most (null when not run or not captured)",
}

_NOT_RUN: dict[str, Any] = {"returncode": None, "stdout": None, "stderr": None}


@dataclass
class Command:
    """What apply runs, decided at plan time."""

    argv: list[str]
    cwd: str
    env: dict[str, str] = field(repr=False)  # may hold secrets: never shown
    secrets: list[str] = field(repr=False)
    stdin: str | None = field(repr=False)  # may carry a password
    creates: list[str]
    removes: list[str]
    ok_codes: list[int]
    capture: bool


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    argv: list[str] = params["argv"]
    creates = [(ctx.path(p), p.endswith("/")) for p in _as_list(params.get("creates"))]
    removes = [ctx.path(p) for p in _as_list(params.get("removes"))]
    if creates and all(ctx.fs.exists(p) for p, _ in creates):
        return Plan(outputs=dict(_NOT_RUN))
    cwd = ctx.path(params.get("cwd", "."))
    if not ctx.fs.is_dir(cwd):
        raise StepError("working directory does not exist", path=cwd)
    extra_env: dict[str, str] = params.get("env", {})
    env = {**ctx.env, **extra_env} if params.get("inherit_env", True) else dict(extra_env)
    if not _program_exists(argv[0], cwd, env, ctx):
        raise StepError("command not found", path=argv[0])
    effects: list[Effect] = [Effect(op="run", path=argv[0], extra={"argv": list(argv)})]
    effects += [create_dir(p) if is_dir else create_file(p, bytes=None) for p, is_dir in creates]
    effects += [remove(p) for p in removes]
    command = Command(
        argv=list(argv),
        cwd=cwd,
        env=env,
        secrets=[v for v in extra_env.values() if len(v) >= MASK_MIN_LENGTH],
        stdin=params.get("stdin"),
        creates=[p for p, _ in creates],
        removes=removes,
        ok_codes=params.get("ok_codes", [0]),
        capture=params.get("capture", True),
    )
    return Plan(effects=effects, outputs=dict(_NOT_RUN), data=command)


def apply(plan: Plan, ctx: StepContext) -> Result:
    command: Command | None = plan.data
    if command is None:
        return Result(outputs=plan.outputs)
    existed = {p for p in command.creates if os.path.lexists(p)}
    try:
        returncode, stdout, stderr = _run(command, ctx.remaining())
        if returncode not in command.ok_codes:
            raise StepError(
                _failure(command.argv[0], returncode, stderr),
                path=command.argv[0],
                transient=returncode == EX_TEMPFAIL,
            )
    except BaseException:
        for path in command.creates:
            if path not in existed:
                _remove_path(path)
        raise
    for path in command.creates:
        if not os.path.exists(path):
            raise StepError(f"declared to create {path} but it does not exist")
    for path in command.removes:
        if os.path.lexists(path):
            raise StepError(f"declared to remove {path} but it still exists")
    outputs = {"returncode": returncode, "stdout": stdout, "stderr": stderr}
    return Result(effects=list(plan.effects), outputs=outputs)


def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _program_exists(program: str, cwd: str, env: dict[str, str], ctx: StepContext) -> bool:
    """Whether ``program`` can be started: a path (relative to ``cwd``, as the
    program is started there) or a name found on the PATH the program gets."""
    if os.sep in program:
        return ctx.fs.is_file(os.path.join(cwd, program))
    return shutil.which(program, path=env.get("PATH", os.defpath)) is not None


def _run(command: Command, timeout: float | None) -> tuple[int, str | None, str | None]:
    """Run the program in its own process group, so that a timeout or an
    interrupt stops everything it started, not just the program itself."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(
                command.argv,
                cwd=command.cwd,
                env=command.env,
                stdin=subprocess.DEVNULL if command.stdin is None else subprocess.PIPE,
                stdout=out if command.capture else None,
                stderr=err if command.capture else None,
                start_new_session=True,
            )
        except FileNotFoundError as e:
            if e.filename == command.cwd:
                raise StepError("working directory does not exist", path=command.cwd) from None
            raise StepError("command not found", path=command.argv[0]) from None
        try:
            stdin = None if command.stdin is None else command.stdin.encode()
            proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            raise StepError(
                f"timed out after {round(timeout or 0, 1):g} s", transient=True
            ) from None
        except BaseException:
            _stop(proc)
            raise
        if not command.capture:
            return proc.returncode, None, None
        return (
            proc.returncode,
            _mask(_tail(out), command.secrets),
            _mask(_tail(err), command.secrets),
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the program and what it started, so they can clean up; SIGKILL
    them if they linger."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=STOP_GRACE)
            return
        except subprocess.TimeoutExpired:
            pass


def _tail(f: IO[bytes]) -> str:
    """The captured text, cut to its last ``CAPTURE_LIMIT`` bytes with a note."""
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - CAPTURE_LIMIT))
    text = f.read().decode("utf-8", errors="replace")
    if size > CAPTURE_LIMIT:
        return f"[wsrun: first {size - CAPTURE_LIMIT} bytes cut]\n{text}"
    return text


def _mask(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _failure(program: str, returncode: int, stderr: str | None) -> str:
    """One line saying how the program failed, ending with its last words."""
    if returncode < 0:
        try:
            how = f"{program} was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"{program} was killed by signal {-returncode}"
    else:
        how = f"{program} exited with code {returncode}"
    lines = [line.strip() for line in (stderr or "").splitlines() if line.strip()]
    if not lines:
        return how
    last = " | ".join(lines[-3:])
    return f"{how}: {last[-300:]}"


def _remove_path(path: str) -> None:
    """Remove a declared output a failed run may have left half-written."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
