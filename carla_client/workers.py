"""What multi-worker collection needs to stay correct when the parent dies, even by SIGKILL.

A worker that outlives its parent keeps writing without the lock: a rerun then starts beside
it and both overshoot the target. Three pieces prevent that:

* :func:`die_with_parent` (first thing in a worker): Linux ``prctl(PR_SET_PDEATHSIG)`` makes the
  kernel kill the worker when its parent dies, however the parent died; a parent already gone
  before the call is caught by comparing ``os.getppid()``.
* :class:`CollectorLock`: the parent holds an exclusive ``flock`` on ``<out>/.collect.lock`` (a
  second collector is refused); workers call :func:`check_lock_held` before each episode and
  each save, which fails as soon as nobody holds the lock any more.
* :class:`QuotaAuthority`: one counter per class in shared memory, behind one lock, started from
  the manifest's counts. A worker ``claim()``-s a frame before saving it and ``release()``-s the
  claim if the save failed, so all workers together never exceed the target; a crash can only
  leave fewer rows than claims, which the rerun then collects.

Example (the parent)::

    with CollectorLock(out) as lock:
        quota = QuotaAuthority(ctx, target={"curve": 1200, "straight": 1200}, have=writer.counts())
        procs = [ctx.Process(target=worker_main, args=(cfg, jobs, quota, lock.path, os.getpid()))]

and the worker::

    die_with_parent(parent_pid)
    ...
    check_lock_held(lock_path)
    if quota.claim(label):
        try: writer.write_frame(...)
        except BaseException: quota.release(label); raise
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import logging
import os
import signal
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
LOCK_NAME = ".collect.lock"


class LockLostError(RuntimeError):
    """The collector that owns this worker no longer holds the dataset lock (it died or was killed)."""


class CollectorBusyError(RuntimeError):
    """Another collector holds the dataset lock."""


# ------------------------------------------------------------------------------ parent death
def die_with_parent(parent_pid: int | None = None, sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux); call it first in a worker.

    SIGKILL by default: a worker must not go on writing even one frame without the lock; the
    ledger lets the rerun remove the one image a kill between image and row can leave.

    Args:
        parent_pid: the parent's pid as the parent saw it (``os.getpid()`` passed as an argument);
            if the worker's parent is already someone else, the parent died before the call and
            this process exits at once.
        sig: the signal to receive.

    Returns:
        True when the death signal is armed; False on platforms without ``prctl`` (then the
        lock check is the only guard).
    """
    armed = False
    libc_name = ctypes.util.find_library("c")
    if libc_name and hasattr(os, "getppid"):
        try:
            libc = ctypes.CDLL(libc_name, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
                err = ctypes.get_errno()
                log.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(err))
            else:
                armed = True
        except (OSError, AttributeError):
            log.warning("prctl is not available: workers rely on the lock check to stop")
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the parent died before prctl took effect: its death signal will never come
    return armed


# ------------------------------------------------------------------------------ the lock
class CollectorLock:
    """Exclusive ``flock`` on ``<out>/.collect.lock`` for the whole run, held by the parent.

    The lock file holds the owner's pid (for the refusal message). The lock goes away with the
    last descriptor, so a SIGKILLed parent releases it and workers see it gone.
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.path = Path(out_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "CollectorLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise CollectorBusyError(f"another collector (pid {owner}) is writing to {self.path.parent}; "
                                     "wait for it or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.set_inheritable(fd, False)  # spawned workers must not keep it alive after the parent
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "CollectorLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_is_held(lock_path: str | os.PathLike) -> bool:
    """True while some process holds the exclusive lock on ``lock_path`` (probe: a non-blocking shared lock)."""
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError as err:  # pragma: no cover - NFS without flock
        return err.errno != errno.ENOLCK
    finally:
        os.close(fd)  # also drops the probe's lock when it succeeded
    return False


def check_lock_held(lock_path: str | os.PathLike) -> None:
    """Raise :class:`LockLostError` unless the parent still holds ``lock_path`` (worker: before each episode/save)."""
    if not lock_is_held(lock_path):
        raise LockLostError(f"the collector lock {lock_path} is no longer held (the parent process died); "
                            "this worker stops without writing")


# ------------------------------------------------------------------------------ quotas
class QuotaAuthority:
    """Per-class frame counts shared by the parent and its spawn-context workers; the one place quotas live.

    Create it in the parent and pass it to ``ctx.Process(args=...)`` (it pickles only while a
    process is being spawned, like the shared memory inside it).

    Args:
        ctx: the multiprocessing context the workers are started with.
        target: frames wanted per class in the whole dataset.
        have: frames already in the manifest per class (after reconcile).
    """

    def __init__(self, ctx, target: dict[str, int], have: dict[str, int] | None = None) -> None:
        self.labels = tuple(target)
        have = have or {}
        self._lock = ctx.Lock()
        self._target = ctx.Array("q", [int(target[c]) for c in self.labels], lock=False)
        self._count = ctx.Array("q", [int(have.get(c, 0)) for c in self.labels], lock=False)

    def _i(self, label: str) -> int:
        try:
            return self.labels.index(label)
        except ValueError:
            raise ValueError(f"unknown class {label!r}; valid: {', '.join(self.labels)}") from None

    def claim(self, label: str) -> bool:
        """Reserve one frame of ``label``; False when the class is full (then do not save the frame)."""
        i = self._i(label)
        with self._lock:
            if self._count[i] >= self._target[i]:
                return False
            self._count[i] += 1
            return True

    def release(self, label: str) -> None:
        """Give back a claim whose frame was not saved (write failed, interrupted before the write)."""
        i = self._i(label)
        with self._lock:
            if self._count[i] > 0:
                self._count[i] -= 1

    def remaining(self, label: str) -> int:
        """Frames of ``label`` still to claim (0 when full); for "is this frame worth rendering" decisions."""
        i = self._i(label)
        with self._lock:
            return max(0, self._target[i] - self._count[i])

    def done(self) -> bool:
        """True when every class is full."""
        with self._lock:
            return all(c >= t for c, t in zip(self._count, self._target))

    def counts(self) -> dict[str, int]:
        """Claimed (saved or being saved) frames per class, manifest rows at start included."""
        with self._lock:
            return {c: int(n) for c, n in zip(self.labels, self._count)}
