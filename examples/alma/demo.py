"""The ALMA data-processing workflow on one machine, in one command.

``python examples/alma/demo.py`` starts one worker process per component (the
EU pipeline driver, the EU and JAO replicated caches, the XTSS, AQUA QA2's
report store, the product ingestor and the data tracker) on the embedded
default stores in a temporary WSRUN_HOME, launches one OUS, passes its QA2
review non-interactively, waits until it is Delivered, prints the seed's
checks and stops the workers gracefully (SIGTERM).

``--movies`` is the seed's "going to the movies" run: nine OUSs launched two
seconds apart, Pipelines that take a few seconds and fail one time in ten
(relaunched, as the seed tells the operator to), every report passed by an
automatic reviewer (auto-review.yaml), the states printed as they move.
``--keep`` leaves the directory for a look around (``WSRUN_HOME=<dir>/home
wsrun state ls ous``), ``--serve`` serves both caches over HTTP (ports 8000
and 8001) as the seed's replicated caches do.

``--state-url``, ``--bus-url``, ``--archive-url`` and ``--journal-url`` put
the system on other backends, e.g. PostgreSQL and RabbitMQ (docs/alma.md,
"On PostgreSQL and RabbitMQ"); without them everything is embedded in the
temporary directory.

``System`` is also what tests/test_alma.py, tests/test_scaleout.py and
bench/run.py drive.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RECIPES = ROOT / "engine" / "wsrun" / "packs" / "alma" / "recipes"
PROGRAM = "2015.1.00657.S"
#: The life-cycle of an OUS that is processed, passed and delivered.
HAPPY_PATH = [
    "ReadyForProcessing",
    "Processing",
    "ReadyForReview",
    "Reviewing",
    "Verified",
    "DeliveryInProgress",
    "Delivered",
]
#: System's backend URL attributes (``<name>_url``) and the variables that give them to wsrun.
BACKEND_ENV = {
    "state": "WSRUN_STATE_URL",
    "bus": "WSRUN_BUS_URL",
    "archive": "WSRUN_ARCHIVE_URL",
    "journal": "WSRUN_JOURNAL_URL",
}
#: The seed's nine OUSs of "going to the movies".
MOVIES = [f"uid://X1/X1/Xb{c}" for c in "12345678a"]


@dataclass
class Worker:
    """One ``wsrun worker`` process and its log file."""

    name: str
    args: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None


@dataclass
class System:
    """The workflow's caches, stores and workers under one directory.

    ``topology="sites"`` runs one worker per component as the seed does, the
    Pipeline at EU and replication EU -> JAO; ``"all-in-one"`` runs
    ``processes`` identical workers that each run every recipe with the
    Pipeline at JAO (the load benchmark). ``auto_review`` adds a worker that
    gives every new Pipeline report that verdict.
    """

    root: Path
    delay: float = 0.0
    failure_rate: float = 0.0
    seed: str | None = None
    topology: str = "sites"
    processes: int = 1
    concurrency: int = 1
    #: Runs at once of the workers named here (the others: ``concurrency``).
    concurrency_of: dict[str, int] = field(default_factory=dict)
    auto_review: str | None = None
    #: Environment the workers and commands get besides WSRUN_HOME (default: ours).
    base_env: dict[str, str] | None = None
    #: The bus they share (default: the embedded one in ``home``), e.g. RabbitMQ's amqp:// URL.
    bus_url: str | None = None
    #: The state store (default: SQLite in ``home``), e.g. a postgresql:// URL.
    state_url: str | None = None
    #: The archive (default: ``home``/archive), e.g. ``postgresql://…?files=s3://bucket/archive``.
    archive_url: str | None = None
    #: The run journal (default: SQLite in ``home``), e.g. a postgresql:// URL.
    journal_url: str | None = None
    #: Seconds a worker's claim on a message lasts unless renewed (the embedded
    #: bus gives a killed worker's messages to another after it; default: the worker's).
    lease: float | None = None
    workers: list[Worker] = field(default_factory=list)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def exec(self) -> str:
        """Where the Pipeline runs."""
        return "EU" if self.topology == "sites" else "JAO"

    def cache(self, executive: str) -> Path:
        return self.root / f"{executive.lower()}-cache"

    @property
    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in (self.base_env or os.environ).items()
            if k not in BACKEND_ENV.values() and k != "WSRUN_ARCHIVE_FILES"
        }
        env = {**env, "WSRUN_HOME": str(self.home), "PYTHONUNBUFFERED": "1"}
        for name, variable in BACKEND_ENV.items():
            if url := getattr(self, f"{name}_url"):
                env[variable] = url
        return env

    @property
    def on_postgresql(self) -> bool:
        """Whether any of its stores is a PostgreSQL database (which needs ``wsrun db upgrade``)."""
        urls = (self.state_url, self.archive_url, self.journal_url)
        return any(u and u.startswith(("postgresql:", "postgres:")) for u in urls)

    # ---- running it -----------------------------------------------------------

    def wsrun(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``wsrun ARGS`` against this system's stores, as an operator would."""
        done = subprocess.run(
            [sys.executable, "-m", "wsrun", *args],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"wsrun {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done

    def start(self, hold: Collection[str] = ()) -> None:
        """Create the caches, register the OUS lifecycle and start the workers,
        except those named in ``hold`` (a site that is down; ``start_held`` later)."""
        for executive in ("EU", "JAO"):
            (self.cache(executive) / "weblogs").mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        if self.on_postgresql:
            self.wsrun("db", "upgrade")  # every PostgreSQL database the stores use
        self.wsrun("state", "lifecycle", str(RECIPES / "ous-lifecycle.yaml"))
        pipeline = [
            f"delay={self.delay}",
            f"failure_rate={self.failure_rate}",
            *([f"seed={self.seed}"] if self.seed is not None else []),
        ]
        eu, jao = str(self.cache("EU")), str(self.cache("JAO"))
        if self.topology == "sites":
            specs = {
                "eu-pipeline-driver": (
                    ["pipeline-driver.yaml"],
                    ["exec=EU", f"cache={eu}", *pipeline],
                ),
                "eu-cache": (["replicated-cache.yaml"], ["exec=EU", f"cache={eu}"]),
                "jao-cache": (
                    ["replicated-cache.yaml"],
                    ["exec=JAO", f"cache={jao}", f"euc={eu}"],
                ),
                "xtss": (["xtss.yaml"], []),
                "aqua-qa2": (["aqua-qa2.yaml"], []),
                "product-ingestor": (["product-ingestor.yaml"], [f"cache={jao}"]),
                "data-tracker": (["data-tracker.yaml"], []),
            }
            specs = {
                name: ([str(RECIPES / r) for r in recipes], sets)
                for name, (recipes, sets) in specs.items()
            }
            if self.auto_review:
                specs["auto-review"] = (
                    [str(HERE / "auto-review.yaml")],
                    [f"flag={self.auto_review}"],
                )
        else:
            recipes = [str(RECIPES)]
            if self.auto_review:
                recipes.append(str(HERE / "auto-review.yaml"))
            sets = ["exec=JAO", f"cache={jao}", *pipeline]
            if self.auto_review:
                sets.append(f"flag={self.auto_review}")
            specs = {f"worker-{i + 1}": (recipes, sets) for i in range(self.processes)}
        for name, (recipes, sets) in specs.items():
            args = [*recipes, "--concurrency", str(self.concurrency_of.get(name, self.concurrency))]
            if self.lease is not None:
                args += ["--lease", str(self.lease)]
            for s in sets:
                args += ["--set", s]
            self.workers.append(Worker(name, args, self.root / "logs" / f"{name}.log"))
        for w in self.workers:
            if w.name not in hold:
                self.spawn(w)
        self.wait_listening([w for w in self.workers if w.process is not None])

    def start_held(self, name: str) -> None:
        """Start the worker ``start`` held back; return once it listens."""
        (held,) = [w for w in self.workers if w.name == name and w.process is None]
        self.spawn(held)
        self.wait_listening([held])

    def spawn(self, w: Worker) -> None:
        """Start worker ``w``'s process, logging to ``w.log``."""
        with open(w.log, "wb") as log:
            w.process = subprocess.Popen(
                [sys.executable, "-m", "wsrun", "worker", *w.args],
                env=self.env,
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def crash_and_replace(self, name: str) -> Worker:
        """SIGKILL worker ``name``, as a crash would (no chance to release its
        messages), and start a new one with the same recipes and options; it is
        returned once it listens. The messages the killed one held come back:
        from RabbitMQ at once, from the embedded bus when their lease runs out."""
        old = next(w for w in self.workers if w.name == name and w.process is not None)
        assert old.process is not None
        old.process.kill()
        old.process.wait()
        self.workers.remove(old)
        new = Worker(name, old.args, old.log.with_name(f"{name}-{int(time.time() * 1000)}.log"))
        self.workers.append(new)
        self.spawn(new)
        self.wait_listening([new])
        return new

    def wait_listening(self, workers: list[Worker] | None = None, timeout: float = 60) -> None:
        """Wait until every worker has declared its queues (messages published
        earlier would wait for them anyway; this makes start-up visible)."""
        deadline = time.monotonic() + timeout
        for w in self.workers if workers is None else workers:
            while "listening:" not in w.log.read_text(errors="replace"):
                assert w.process is not None
                if w.process.poll() is not None:
                    raise RuntimeError(f"worker {w.name} exited:\n{w.log.read_text()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker {w.name} did not start:\n{w.log.read_text()}")
                time.sleep(0.05)

    def stop(self, timeout: float = 60) -> dict[str, int]:
        """SIGTERM every worker and wait: {name: exit status}."""
        for w in self.workers:
            if w.process is not None and w.process.poll() is None:
                w.process.send_signal(signal.SIGTERM)
        codes = {}
        for w in self.workers:
            if w.process is None:
                continue
            try:
                codes[w.name] = w.process.wait(timeout)
            except subprocess.TimeoutExpired:
                w.process.kill()
                codes[w.name] = w.process.wait()
        self.workers.clear()
        return codes

    def launch(self, ous: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.wsrun(
            "alma/launcher", PROGRAM, ous, "PipelineCalibration", self.exec, check=check
        )

    def launch_many(self, ids: list[str]) -> None:
        """Launch every OUS in ``ids`` at once: the launcher recipe run once per
        OUS in one process (no interpreter start-up per launch)."""
        script = (
            "import sys\nfrom wsrun.cli.main import main\n"
            "for ous in sys.argv[3:]:\n"
            "    if main(['alma/launcher', sys.argv[1], ous, 'PipelineCalibration', sys.argv[2], '-q']):\n"
            "        sys.exit(f'launching {ous} failed')\n"
        )
        subprocess.run(
            [sys.executable, "-c", script, PROGRAM, self.exec, *ids],
            env=self.env,
            cwd=self.root,
            check=True,
            capture_output=True,
        )

    def review(self, ous: str, flag: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        weblogs = f"file://{self.cache('JAO')}/weblogs"
        return self.wsrun(
            "alma/aqua-qa2-review",
            "--ous",
            ous,
            "--flag",
            flag,
            "--weblog-url",
            weblogs,
            check=check,
        )

    # ---- looking at it --------------------------------------------------------

    def state_store(self) -> Any:
        from wsrun.stores.state import open_state_store

        return open_state_store(self.state_url or f"sqlite://{self.home / 'state.db'}")

    def bus(self) -> Any:
        from wsrun.stores.bus import open_bus

        return open_bus(self.bus_url or f"sqlite://{self.home / 'bus.db'}")

    def archive(self) -> Any:
        """The archive the workers ingest into, open (close it after)."""
        from wsrun.stores.archive.store import ArchiveStore

        return ArchiveStore.open(self.archive_url or str(self.home / "archive"), create=False)

    def states(self, ids: Iterable[str]) -> dict[str, str | None]:
        with self.state_store() as store:
            return {i: (e.state if (e := store.get("ous", i)) else None) for i in ids}

    def wait_for(self, ous: str, states: str | list[str], timeout: float = 60) -> str:
        """Wait until the OUS is in one of ``states``; the state it reached."""
        wanted = [states] if isinstance(states, str) else states
        deadline = time.monotonic() + timeout
        while True:
            state = self.states([ous])[ous]
            if state in wanted:
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"{ous} is {state}, not {' or '.join(wanted)}{self.logs()}")
            time.sleep(0.05)

    def messages(self, statuses: Iterable[str] = ("ready", "claimed", "dead")) -> dict[str, int]:
        """Messages in these states per queue, unrouted ones (queue ``""``)
        included: state changes nobody subscribes to are not kept, so
        anything left is work somebody should still do."""
        bus = self.bus()
        try:
            counts = bus.counts()
        finally:
            bus.close()
        return {
            q: n
            for q, by_status in counts.items()
            if (n := sum(by_status.get(s, 0) for s in statuses))
        }

    def settle(self, timeout: float = 60) -> None:
        """Wait until no queue holds a message waiting or in handling."""
        deadline = time.monotonic() + timeout
        while left := self.messages(("ready", "claimed")):
            if time.monotonic() > deadline:
                raise TimeoutError(f"messages left: {left}{self.logs()}")
            time.sleep(0.05)

    def logs(self) -> str:
        return "".join(
            f"\n--- {w.name}\n{w.log.read_text(errors='replace')[-3000:]}"
            for w in self.workers
            if w.log.exists()
        )

    def checks(self, ous: str) -> dict[str, Any]:
        """The seed's checks for one OUS, as values (see docs/alma.md), on its
        current attempt: the Pipeline run of its ``timestamp``, from the last
        time it was ReadyForProcessing (a relaunch after a ProcessingProblem or
        a QA2 Fail starts a new attempt). What earlier attempts left (a weblog
        in the archive, a report, now Superseded) is counted apart."""
        from wsrun.packs.alma.alma_pipeline import ous_tag

        with self.state_store() as store:
            entity = store.get("ous", ous)
            history = [c.state for c in store.history("ous", ous)]
            reports = [
                r
                for r in store.list(kind="pipeline-report", limit=100000)
                if r.attributes.get("ousUID") == ous
            ]
            delivery = store.get("delivery-status", ous)
        states = [s for i, s in enumerate(history) if i == 0 or history[i - 1] != s]
        if "ReadyForProcessing" in states:
            states = states[len(states) - 1 - states[::-1].index("ReadyForProcessing") :]
        attributes = entity.attributes if entity else {}
        current = str(attributes.get("timestamp"))
        tag = ous_tag(ous)
        archive = self.archive()
        try:
            mine = [p for p in archive.products() if f"-{tag}-" in p.filename]
            files = {p.locator: len(archive.product(p.locator).files) for p in mine}  # type: ignore[union-attr]
        finally:
            archive.close()
        now = [p for p in mine if f"-{tag}-{current}." in p.filename]
        weblog = str(attributes.get("weblog", ""))[: -len(".zip")]
        products = (
            Path(str(attributes.get("productsDir")))
            / "SOUS"
            / "GOUS"
            / str(attributes.get("ousDir"))
            / "products"
        )
        return {
            "attempt": attributes.get("attempt"),
            "states": states,
            "archive_files": sum(files[p.locator] for p in now),
            "product_metadata_records": sum(p.type == "alma_data_product" for p in now),
            "pipeline_reports": sum(
                r.state == "Stored" and r.attributes.get("timestamp") == current for r in reports
            ),
            "complete_delivery_statuses": int(
                delivery is not None
                and delivery.attributes.get("complete") is True
                and delivery.attributes.get("timestamp") == current
            ),
            "unconsumed_messages": sum(self.messages().values()),
            "weblog_expanded": {
                e: (self.cache(e) / "weblogs" / weblog / "index.html").is_file()
                for e in ("EU", "JAO")
            },
            "products_identical": tree(self.cache("EU") / products)
            == tree(self.cache("JAO") / products),
            "superseded": {
                "archive_files": sum(files.values()) - sum(files[p.locator] for p in now),
                "pipeline_reports": sum(r.state == "Superseded" for r in reports),
            },
        }


def tree(root: Path) -> dict[str, bytes] | None:
    """Every file below ``root`` -> its bytes; None when ``root`` is missing."""
    if not root.is_dir():
        return None
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def print_checks(ous: str, checks: dict[str, Any]) -> bool:
    """Print the seed's checks with what was expected; whether all hold."""
    expected = {
        "states": HAPPY_PATH,
        "archive_files": 6,
        "product_metadata_records": 5,
        "pipeline_reports": 1,
        "complete_delivery_statuses": 1,
        "unconsumed_messages": 0,
        "weblog_expanded": {"EU": True, "JAO": True},
        "products_identical": True,
    }
    print(f"\nThe seed's checks for {ous} (attempt {checks['attempt']}):")
    earlier = checks["superseded"]
    if any(earlier.values()):
        print(
            f"  (superseded attempts left {earlier['archive_files']} file(s) in the archive"
            f" and {earlier['pipeline_reports']} report(s), not counted below)"
        )
    ok = True
    for name, want in expected.items():
        got = checks[name]
        good = got == want
        ok &= good
        shown = " -> ".join(got) if name == "states" else got
        print(f"  {'ok ' if good else 'BAD'} {name}: {shown}")
    return ok


def one_ous(system: System) -> bool:
    ous = "uid://X1/X1/Xb0"
    print(f"launching {ous} on {system.exec}")
    system.launch(ous)
    state = system.wait_for(ous, ["ReadyForReview", "ProcessingProblem"])
    while state == "ProcessingProblem":
        print(f"{ous}: ProcessingProblem (the simulated Pipeline failed); launching it again")
        system.launch(ous)
        state = system.wait_for(ous, ["ReadyForReview", "ProcessingProblem"])
    print(f"{ous} is ReadyForReview; QA2 review: Pass")
    print(system.review(ous, "Pass").stdout.strip())
    system.wait_for(ous, "Delivered")
    system.settle()
    return print_checks(ous, system.checks(ous))


def movies(system: System, interval: float) -> bool:
    """The seed's nine OUSs; relaunch those the Pipeline failed on."""
    pending = list(MOVIES)
    launched: list[str] = []
    next_launch = time.monotonic()
    shown = None
    while True:
        if pending and time.monotonic() >= next_launch:
            ous = pending.pop(0)
            system.launch(ous)
            launched.append(ous)
            next_launch = time.monotonic() + interval
        states = system.states(launched)
        for ous, state in states.items():
            if state == "ProcessingProblem":
                print(f"  {ous}: ProcessingProblem; launching it again")
                system.launch(ous, check=False)
        line = "  ".join(f"{o[-3:]}:{s}" for o, s in states.items())
        if line != shown:
            print(time.strftime("%H:%M:%S"), line, flush=True)
            shown = line
        if not pending and all(s == "Delivered" for s in states.values()):
            break
        time.sleep(0.2)
    system.settle()
    return all([print_checks(o, system.checks(o)) for o in MOVIES])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--movies", action="store_true", help="the seed's nine-OUS run")
    parser.add_argument("--delay", type=float, help="longest Pipeline run, s (0; 5 with --movies)")
    parser.add_argument(
        "--failure-rate", type=float, help="Pipeline failures (0; 0.1 with --movies)"
    )
    parser.add_argument("--seed", default="42", help="seed of the simulated Pipelines")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between launches")
    parser.add_argument("--dir", type=Path, help="where to put it all (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the directory afterwards")
    parser.add_argument("--serve", action="store_true", help="serve the caches on :8000 and :8001")
    embedded = "default: SQLite in the demo's directory"
    backends = {
        "state": f"the state store, e.g. postgresql://wsrun@db/alma ({embedded})",
        "bus": f"the bus, e.g. amqp://guest:guest@127.0.0.1:5672/%%2F?prefix=alma. ({embedded})",
        "archive": "the archive, e.g. postgresql://wsrun@db/alma?files=s3://bucket/archive"
        " (default: a directory in the demo's directory)",
        "journal": f"the run journal, e.g. postgresql://wsrun@db/alma ({embedded})",
    }
    for name, what in backends.items():
        parser.add_argument(f"--{name}-url", metavar="URL", help=what)
    args = parser.parse_args(argv)
    root = args.dir or Path(tempfile.mkdtemp(prefix="wsrun-alma-"))
    delay = args.delay if args.delay is not None else (5.0 if args.movies else 0.0)
    rate = args.failure_rate if args.failure_rate is not None else (0.1 if args.movies else 0.0)
    system = System(
        root,
        delay=delay,
        failure_rate=rate,
        seed=args.seed,
        concurrency=4 if args.movies else 1,
        auto_review="Pass" if args.movies else None,
        **{f"{name}_url": getattr(args, f"{name}_url") for name in BACKEND_ENV},
    )
    servers: list[subprocess.Popen[bytes]] = []
    print(f"wsrun ALMA workflow in {root}; worker logs in {root / 'logs'}")
    for name in BACKEND_ENV:
        if url := getattr(system, f"{name}_url"):
            from wsrun.stores.bus.base import mask

            print(f"{name}: {mask(url)}")
    try:
        system.start()
        print("workers: " + ", ".join(w.name for w in system.workers))
        if args.serve:
            for port, executive in ((8000, "EU"), (8001, "JAO")):
                servers.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                        cwd=system.cache(executive),
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            print("caches served at http://localhost:8000 (EU) and http://localhost:8001 (JAO)")
        ok = movies(system, args.interval) if args.movies else one_ous(system)
    finally:
        for server in servers:
            server.terminate()
            server.wait()
        codes = system.stop()
        print(f"workers stopped: {codes}")
        if not args.keep and args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
        elif args.keep:
            print(f"kept {root}: WSRUN_HOME={root / 'home'} wsrun state ls ous")
    return 0 if ok and not any(codes.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
