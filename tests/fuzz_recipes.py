"""Fuzzing `wsrun validate` and dry runs with hostile recipe files.

Every input must end in a valid result or a clean error: exit 0, or exit 2
with ``file:line:col:`` first (exit 1 is allowed for a dry run whose step
fails, with an ``error:`` line); never a traceback, a hang or a memory
blow-up. The inputs are the seed corpus (``tests/fuzz_corpus``) as it is,
then Hypothesis's: recipes built from the recipe language's own words and
expression fragments, and corpus files with bytes inserted, deleted and
repeated.

    python tests/fuzz_recipes.py --seconds 600          # make fuzz MINUTES=10
    python tests/fuzz_recipes.py --derandomize --examples 150 --seconds 60

The process limits its own address space (1 GiB) and each input's time
(signal.alarm), so a bomb fails with the input that caused it instead of
taking the machine. A failing input is saved to ``fuzz-failures/``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import re
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

CORPUS = Path(__file__).parent / "fuzz_corpus"
ADDRESS_SPACE = 1 << 30
SECONDS_PER_INPUT = 30  # wall clock: generous, the machine may be loaded
POSITION = re.compile(r"^/[^:\n]+:\d+:\d+: ")

# The words of the recipe language, so that generated files get past the YAML
# parser and the schema into the checks behind them.
STEP_TYPES = ["noop", "mkdir", "copy", "template", "fail", "checksum", "find", "nope", "./x.yaml"]
STEP_KEYS = ["uses", "with", "id", "name", "if", "for_each", "retry", "timeout", "when", "env"]
PARAMS = ["path", "sources", "to", "v", "content", "message", "pattern", "mode", "checksum"]
NAMES = ["inputs", "vars", "steps", "settings", "env", "run", "item", "index", "error", "x"]
FRAGMENTS = [
    "{{", "}}", "{%", "%}", "${{", " ", ".", "|", "(", ")", "[", "]", "'", '"', ",", ":",
    "+", "-", "*", "**", "/", "//", "%", "~", "not", "and", "or", "if", "else", "in", "is",
    "for", "endfor", "set", "=", "0", "1", "10", "2000", "1e308", "'x'", "none", "true",
    "length", "lenght", "basename", "joinpath", "from_json", "center", "format", "replace",
    "range", "lipsum", "dict", "__class__", "mro", "outputs", "a", "b", "src", "$HOME",
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.lists(st.sampled_from(FRAGMENTS + NAMES), max_size=12).map("".join),
)
expressions = st.lists(st.sampled_from(FRAGMENTS + NAMES), min_size=1, max_size=16).map(
    lambda parts: "{{ " + " ".join(parts) + " }}"
)
values = st.recursive(
    st.one_of(scalars, expressions),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(PARAMS + NAMES), inner, max_size=4),
    ),
    max_leaves=12,
)
steps = st.fixed_dictionaries(
    {"uses": st.sampled_from(STEP_TYPES)},
    optional={
        "with": st.dictionaries(
            st.sampled_from(PARAMS), st.one_of(values, expressions), max_size=4
        ),
        "id": st.sampled_from(["a", "b", "copy", "x-y", "1"]),
        "name": st.sampled_from(["a", "b", "make"]),
        "if": st.one_of(expressions, st.sampled_from(["inputs.n", "steps.a.status", "1 +"])),
        "for_each": st.one_of(expressions, st.lists(scalars, max_size=3)),
        "retry": st.dictionaries(st.sampled_from(["attempts", "delay"]), scalars, max_size=2),
        "timeout": scalars,
        "when": scalars,
    },
)
inputs = st.dictionaries(
    st.sampled_from(["n", "src", "dest", "a b"]),
    st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["path", "string", "int", "bool", "choice", "list", "x"]),
            "default": values,
            "flags": st.lists(st.one_of(st.sampled_from(["--n", "-n", "n"]), values), max_size=2),
            "choices": st.lists(scalars, max_size=3),
            "required": st.booleans(),
        },
    ),
    max_size=3,
)
recipes = st.fixed_dictionaries(
    {"recipe": st.sampled_from(["fuzz", "a/b", "", "1"])},
    optional={
        "steps": st.one_of(st.lists(steps, max_size=4), scalars),
        "inputs": inputs,
        "vars": st.dictionaries(st.sampled_from(["a", "b", "x"]), values, max_size=3),
        "on_failure": st.one_of(st.lists(steps, max_size=2), st.none()),
        "finally": st.lists(steps, max_size=2),
        "outputs": st.dictionaries(st.sampled_from(["o", "p"]), values, max_size=2),
        "on": st.dictionaries(st.sampled_from(["message", "file", "state"]), values, max_size=2),
        "jobs": values,
    },
)


def _dump(data: object) -> bytes:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode()


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """A file with a few byte-level edits: insertions (of YAML syntax, control
    bytes and invalid UTF-8), deletions and repeated spans."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "delete", "repeat"]))
        if kind == "insert":
            piece = draw(
                st.one_of(
                    st.sampled_from(
                        [
                            b"&a ",
                            b"*a",
                            b"<<: *a",
                            b"!!int ",
                            b"!!float ",
                            b"!!timestamp ",
                            b"!!binary ",
                            b"!!python/object:os.system ",
                            b"{",
                            b"}",
                            b"[",
                            b"]",
                            b"\n  ",
                            b"\t",
                            b": ",
                            b"- ",
                            b"---\n",
                            b"%YAML 1.1\n",
                            b"\x00",
                            b"\x07",
                            b"\xe9",
                            b"\xff\xfe",
                            b"\xef\xbb\xbf",
                            b"{{",
                            b"}}",
                            b"${{ ",
                            b"$HOME/",
                            b"'",
                            b'"',
                            b"#",
                            b"|",
                            b">",
                            b"? ",
                        ]
                    ),  # fmt: skip
                    st.binary(max_size=8),
                )
            )
            data[at:at] = piece
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 20))]
        else:
            span = bytes(data[at : at + draw(st.integers(1, 30))])
            data[at:at] = span * draw(st.integers(1, 50))
    return bytes(data)


def corpus() -> list[bytes]:
    return [p.read_bytes() for p in sorted(CORPUS.glob("*.yaml"))]


inputs_strategy = st.one_of(
    recipes.map(_dump),
    mutated(recipes.map(_dump)),
    mutated(st.sampled_from(corpus())),
)


class Hang(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise Hang(f"no answer within {SECONDS_PER_INPUT}s")


def check_one(content: bytes, workdir: Path) -> None:
    """Validate ``content`` and, when valid, dry-run it; raise AssertionError
    unless each answer is clean."""
    from wsrun.cli.main import main

    path = workdir / "fuzz.yaml"
    path.write_bytes(content)
    for args in (["validate", str(path)], [str(path), "--dry-run"]):
        out, err = io.StringIO(), io.StringIO()
        signal.alarm(SECONDS_PER_INPUT)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(args)
        except SystemExit as e:  # argparse for a recipe's own options
            code = e.code if isinstance(e.code, int) else 2
        finally:
            signal.alarm(0)
        text = err.getvalue()
        assert "Traceback" not in text, text
        if args[0] == "validate":
            assert code in (0, 2), (code, text)
            if code == 2:
                assert POSITION.match(text), text[:500]
                return  # invalid: nothing to run
        else:
            assert code in (0, 1, 2), (code, text)
            if code == 1:
                assert "error: " in text, text[:500]


def run(examples: int, seconds: float, derandomize: bool, seed_value: int | None) -> int:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    signal.signal(signal.SIGALRM, _alarm)
    deadline = time.monotonic() + seconds
    failures = Path.cwd() / "fuzz-failures"
    tested = 0
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        os.chdir(workdir)  # dry runs resolve relative paths here
        os.environ["WSRUN_HOME"] = str(workdir / "home")

        def checked(content: bytes) -> None:
            try:
                check_one(content, workdir)
            except BaseException:
                failures.mkdir(exist_ok=True)
                name = hashlib.sha1(content).hexdigest()[:12]
                (failures / f"input-{name}.yaml").write_bytes(content)
                print(f"fuzz: failing input kept in {failures}/input-{name}.yaml")
                raise

        for content in corpus():
            checked(content)
            tested += 1
        batch = 0
        while time.monotonic() < deadline and tested < examples:
            size = min(100, examples - tested)

            @settings(
                max_examples=size,
                deadline=None,
                database=None,
                derandomize=derandomize,
                suppress_health_check=list(HealthCheck),
                print_blob=True,
            )
            @given(inputs_strategy)
            def fuzz(content: bytes) -> None:
                if time.monotonic() < deadline:
                    checked(content)

            if not derandomize:
                fuzz = seed((seed_value or 0) + batch)(fuzz)
            fuzz()
            tested += size
            batch += 1
            if derandomize:
                break  # one fixed batch: the same inputs every time
    print(f"fuzz: {tested} inputs, all answered cleanly")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--examples", type=int, default=10**9)
    parser.add_argument("--derandomize", action="store_true", help="the same inputs every run")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    sys.setrecursionlimit(1000)
    seed_value = args.seed if args.seed is not None else int(time.time())
    if not args.derandomize:
        print(f"fuzz: seed {seed_value}")
    return run(args.examples, args.seconds, args.derandomize, seed_value)


if __name__ == "__main__":
    sys.exit(main())
