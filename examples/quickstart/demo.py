"""`make demo`: run the quickstart recipe end to end and show what it did.

A dry run first (nothing is written), then the real run, then the same run
again (every step reports ok: nothing to do), then coreutils checks the sums.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
OUT = ROOT / "build" / "quickstart"
WSRUN = [sys.executable, "-m", "wsrun"]


def show(*args: str, cwd: Path = ROOT) -> None:
    print(f"\n$ {' '.join(args)}", flush=True)
    subprocess.run(list(args), cwd=cwd, check=True)


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    os.environ.setdefault("WSRUN_HOME", str(ROOT / "build" / "wsrun-home"))
    recipe = "examples/quickstart"
    src = "examples/quickstart/products"
    dest = str(OUT.relative_to(ROOT))
    show(*WSRUN, "validate", recipe)
    show(*WSRUN, recipe, src, dest, "--tar", "--dry-run")
    show(*WSRUN, recipe, src, dest, "--tar")
    show(*WSRUN, recipe, src, dest, "--tar")
    show("sha256sum", "-c", "SHA256SUMS", cwd=OUT / "request-1")
    show("tar", "-tzf", str(OUT / "request-1.tar.gz"))
    show(*WSRUN, "runs", "--limit", "3")
    print(f"\nThe delivery is in {OUT}; try `wsrun {recipe} --help` or `wsrun steps copy`.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
