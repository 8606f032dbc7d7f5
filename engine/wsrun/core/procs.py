"""Child processes that die with wsrun.

A process wsrun forks to write (tar's writers, rsync) must not outlive it: a
killed run's orphan would go on writing while a re-run writes the same files.
On Linux the kernel sends such a child a signal when its parent dies
(``PR_SET_PDEATHSIG``); elsewhere the writers also check their parent now and
then.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def death_signal(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A function for a child to call first thing after fork (or as Popen's
    ``preexec_fn``): it asks for ``sig`` when the parent dies, and sends it to
    itself at once if the parent is already gone (so a child ends the same way
    whether its parent died just before or after). Made in the parent, so the
    child only calls into libc, which is safe after a fork in a threaded process."""
    parent = os.getpid()
    prctl = None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        pass

    def arm() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # died before the signal was armed
            os.kill(os.getpid(), sig)
            os._exit(1)  # a signal this process ignores

    return arm
