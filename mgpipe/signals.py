"""Signals for stages (SPEC section 12): SIGTERM and SIGINT end a stage cleanly, and pool
workers never outlive their parent.

SIGTERM is what ``timeout``, Slurm and Kubernetes send. Its default action kills the process
on the spot: no ``finally`` runs, so worker pools stay alive under pid 1 (each worker holds
the write end of its own task queue, so it waits for work forever) and work files are left
half-written. Within ``raise_on_signals()`` SIGTERM (and SIGINT) raise ``Interrupted`` in
the main thread instead, so the usual clean-up runs: ``except BaseException`` blocks, context
managers (``atomic_path`` removes its temporary file, an HDF5 file is closed), and
``terminate_pool`` for the workers. A stage then ends with a one-line message and
``Interrupted.exit_code``::

    try:
        with raise_on_signals():
            work()
    except Interrupted as e:
        print(f"stage: interrupted by {e.name}; <what was kept>, rerun to resume", file=sys.stderr)
        return e.exit_code

Pool workers get ``init_worker`` as (part of) their initializer (``worker_pool`` does it):
they die when their parent dies, even by SIGKILL, which no handler can see, and leave SIGINT
to the parent.
"""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(KeyboardInterrupt):
    """Signal ``signum`` (SIGTERM or SIGINT) arrived. A KeyboardInterrupt, so code that already
    cleans up after Ctrl-C does so after SIGTERM too, and ``except Exception`` does not
    swallow it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = int(signum)
        self.name = signal.Signals(signum).name

    @property
    def exit_code(self) -> int:
        """128 + signum: the shell's code for a process ended by that signal (143 for SIGTERM)."""
        return 128 + self.signum

    def __str__(self) -> str:
        return f"interrupted by {self.name}"


@contextmanager
def raise_on_signals(signums: Sequence[int] = DEFAULT_SIGNALS) -> Iterator[None]:
    """Within the block, each of ``signums`` raises ``Interrupted`` in the main thread (Python
    runs signal handlers there, between bytecodes: a call into C, e.g. an HDF5 write,
    finishes first). Only the first signal raises: a repeat during the clean-up is ignored
    (``timeout`` signals both the process and its group), so the clean-up finishes; SIGKILL
    still ends a stuck one. The previous handlers come back on exit. Main thread only.

    An exception raised while a ``__del__`` or weakref callback runs is swallowed by Python
    ("Exception ignored in ..."): the signal is then delivered again, 50 ms later, rather
    than lost.
    """
    fired: list[int] = []

    def handler(signum, frame):
        if not fired:
            fired.append(signum)
            raise Interrupted(signum)

    def unraisable(info):
        if isinstance(info.exc_value, Interrupted) and fired:
            fired.clear()
            # From outside this hook: a handler that ran in it would be swallowed again.
            threading.Timer(0.05, os.kill, (os.getpid(), info.exc_value.signum)).start()
        else:
            previous_hook(info)

    previous = {s: signal.signal(s, handler) for s in signums}
    previous_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for s, h in previous.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)


# ---- pool workers ------------------------------------------------------------------------------

def _set_pdeathsig(signum: int) -> bool:
    """Ask Linux to send ``signum`` to this process when its parent dies; False where
    prctl is unavailable (not Linux, no libc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int, interval: float) -> None:
    """Thread: wait for process ``parent_pid`` to end, then end this one. On multiprocessing's
    parent sentinel (a pipe only that process holds open) where this is one of its
    processes; else by polling ``os.getppid()`` every ``interval`` s."""
    parent = mp.parent_process()
    if parent is not None and parent.pid == parent_pid:
        parent.join()
    else:
        while os.getppid() == parent_pid:
            time.sleep(interval)
    os.kill(os.getpid(), signal.SIGTERM)


def init_worker(parent_pid: int, poll_interval: float = 0.5) -> None:
    """Pool-worker initializer: die with the parent (pid ``parent_pid``, from ``os.getpid()``
    in the parent), however it ends, and ignore SIGINT.

    Linux: PR_SET_PDEATHSIG sends this process SIGTERM when its parent dies (strictly: when
    the parent *thread* that started it exits, so start pools from the main thread, as
    ProcessPoolExecutor does). Elsewhere, or when the parent is a fork server (which its
    workers keep alive), a daemon thread watches the parent (``_watch_parent``). Ctrl-C in a
    terminal sends SIGINT to the whole process group: the parent decides (and terminates its
    workers), so workers do not each print a traceback. SIGTERM gets its default action
    back (a forked worker inherits the parent's handler).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if os.getppid() == parent_pid and _set_pdeathsig(signal.SIGTERM):
        if os.getppid() != parent_pid:  # the parent died before the request: no signal will come
            os.kill(os.getpid(), signal.SIGTERM)
        return
    threading.Thread(target=_watch_parent, args=(parent_pid, poll_interval), daemon=True,
                     name="watch-parent").start()


def terminate_pool(ex: ProcessPoolExecutor, timeout: float = 5.0) -> None:
    """Stop ``ex`` now, for an interrupted stage: cancel queued work, SIGTERM the workers
    (results not yet written are lost anyway, and a queued clip can take minutes), wait up to
    ``timeout`` s for them to exit, then SIGKILL any left. No public API does this before
    Python 3.14 (``shutdown`` waits for running work)."""
    procs = list((getattr(ex, "_processes", None) or {}).values())
    ex.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        p.terminate()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(1.0)


@contextmanager
def worker_pool(workers: int, mp_context=None) -> Iterator[ProcessPoolExecutor]:
    """A ProcessPoolExecutor of ``workers`` processes whose workers die with this process
    (``init_worker``). Leaving the block normally waits for the work; leaving it by an
    exception (an interruption) ends the workers at once (``terminate_pool``), where plain
    ``with ProcessPoolExecutor()`` would wait for every queued task."""
    ex = ProcessPoolExecutor(workers, mp_context=mp_context, initializer=init_worker,
                             initargs=(os.getpid(),))
    try:
        yield ex
    except BaseException:
        terminate_pool(ex)
        raise
    ex.shutdown(wait=True)


def die_with_dvc() -> bool:
    """A stage run by DVC (``DVC_STAGE`` set) gets SIGTERM when DVC dies, so it ends cleanly
    (``Interrupted``) instead of running on under pid 1: ``kill <dvc pid>`` (or an out-of-
    memory kill of DVC) would otherwise leave the stage training unseen, racing the rerun
    for the same work folder. Only under DVC: a stage started by hand from a shell (``nohup
    python stages/train.py &``) must survive that shell. DVC starts the command from its main
    thread with ``$SHELL -c``, which execs it, so the parent is DVC itself. True when set."""
    if "DVC_STAGE" not in os.environ:
        return False
    parent = os.getppid()
    if parent == 1 or not _set_pdeathsig(signal.SIGTERM):
        return False
    if os.getppid() != parent:  # DVC died before the request: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def run_interruptible(stage: str, work: Callable[[], int], kept: str | Callable[[], str]) -> int:
    """``work()`` (a stage's main) with SIGTERM/SIGINT raising ``Interrupted``; on one, print
    "<stage>: interrupted by SIGTERM; <kept>" and return 128 + the signal number. ``kept``
    says what survives for the rerun (a callable: worked out after the interruption). Under
    DVC the stage also ends when DVC dies (``die_with_dvc``)."""
    try:
        with raise_on_signals():
            die_with_dvc()
            return work()
    except Interrupted as e:
        print(f"{stage}: interrupted by {e.name}; {kept() if callable(kept) else kept}",
              file=sys.stderr)
        return e.exit_code
