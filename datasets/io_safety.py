"""Checks every CLI runs before it starts work, strict atomic JSON, and the one-line error wrapper.

A CLI that benchmarks for ten minutes and then cannot write ``--json`` has wasted the ten
minutes; one that prints a 40-line traceback for a typo has hidden the one line that matters.
So every CLI:

* checks each output path up front with :func:`check_output_path` (creatable, writable, not
  under a file), and each size that comes from input with :func:`check_img_size`;
* writes JSON with :func:`write_json_atomic` (strict JSON: ``null``, never ``NaN``; a temp file
  renamed into place, so a kill never leaves half a file);
* runs its work inside :func:`cli_errors`, which turns the known user errors (and Ctrl-C) into
  one line on stderr and a non-zero exit; ``--debug``/``-v`` shows the traceback too.

Imports nothing of ours, so every layer may use it.

Example::

    def main(argv=None) -> int:
        args = get_args_parser().parse_args(argv)
        with cli_errors(debug=args.verbose):
            check_output_path(args.json, "--json")
            result = run(config_from_args(args))
            write_json_atomic(args.json, result)
        return 0
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import signal
import sys
import traceback
from pathlib import Path

log = logging.getLogger(__name__)

IMG_SIZE_RANGE: tuple[int, int] = (8, 1024)
"""Model input sizes accepted from any input (CLI, checkpoint, ONNX metadata), px, inclusive.

EfficientNet-B0..B7 use 224..600; 1024 leaves room while keeping one float32 NCHW frame at
12 MiB and a 100k-frame uint8 cache under 300 GiB."""

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class OutputPathError(ValueError):
    """An output path cannot be written (one line naming the flag, the path and why)."""


def check_output_path(path: str | os.PathLike | None, what: str, *, is_dir: bool = False) -> Path | None:
    """Fail now, not after the work, if ``path`` cannot be written.

    Creates nothing: it walks up to the first existing ancestor and checks that it is a
    writable directory (so ``out/run1/metrics.json`` is fine in a fresh tree,
    ``file.txt/metrics.json`` is not). An existing file must be writable and so must its folder
    (outputs are written to a temp file and renamed).

    Args:
        path: the output file (or directory with ``is_dir``); None passes (optional output).
        what: the flag for the message, e.g. ``"--json"``.
        is_dir: ``path`` is a directory to create or write into.

    Returns:
        ``path`` as a Path (None for None).

    Raises:
        OutputPathError: one line naming ``what``, the path and the reason.
    """
    if path is None:
        return None
    p = Path(path).expanduser()
    if p.exists():
        if is_dir and not p.is_dir():
            raise OutputPathError(f"{what} {str(p)!r} is a file, expected a directory")
        if not is_dir and p.is_dir():
            raise OutputPathError(f"{what} {str(p)!r} is a directory, expected a file path")
        if not _writable(p):
            raise OutputPathError(f"{what} {str(p)!r} is not writable")
        return p
    ancestor = p.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        if ancestor.is_symlink():  # dangling symlink
            raise OutputPathError(f"{what} {str(p)!r}: {str(ancestor)!r} is a broken symlink")
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputPathError(f"{what} {str(p)!r} cannot be created: {str(ancestor)!r} is a file, not a directory")
    if not _writable(ancestor):
        raise OutputPathError(f"{what} {str(p)!r} cannot be created: {str(ancestor)!r} is not writable")
    return p


def _writable(path: Path) -> bool:
    """True when ``path`` (a file or directory) can be written; probes directories for real (root, RO mounts)."""
    if path.is_dir():
        probe = path / f".write_probe_{os.getpid()}"
        try:
            fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return True
        except OSError:
            return False
        os.close(fd)
        with contextlib.suppress(OSError):
            probe.unlink()
        return True
    return os.access(path, os.W_OK) and _writable(path.parent)


def check_img_size(n, source: str) -> int:
    """``n`` as an int within :data:`IMG_SIZE_RANGE`, else ValueError naming ``source`` and the range.

    ``source`` says where the size came from (``"--img-size"``, ``"model.onnx metadata"``, ...).
    """
    lo, hi = IMG_SIZE_RANGE
    try:
        value = int(n)
        ok = value == n or (isinstance(n, str) and str(value) == n.strip())
    except (TypeError, ValueError):
        ok = False
    if not ok or not lo <= value <= hi:
        raise ValueError(f"{source}: image size {n!r} out of range; valid: an integer in [{lo}, {hi}] px")
    return value


# ------------------------------------------------------------------------------------ JSON
def strict_json(obj):
    """``obj`` with every non-finite float replaced by None and numpy scalars/arrays made plain.

    ``json.dumps`` writes ``NaN``/``Infinity`` by default, which strict readers (browsers, jq,
    most languages) reject; a metric that does not exist is ``null``.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    tolist = getattr(obj, "tolist", None)  # numpy scalar/array, torch tensor
    if callable(tolist):
        return strict_json(tolist())
    item = getattr(obj, "item", None)
    if callable(item):
        return strict_json(item())
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def dumps_strict(obj, **kwargs) -> str:
    """``json.dumps`` of :func:`strict_json` (``allow_nan=False``: a NaN that slipped through raises)."""
    return json.dumps(strict_json(obj), allow_nan=False, **kwargs)


def write_json_atomic(path: str | os.PathLike, obj, indent: int | None = 2) -> Path:
    """Write ``obj`` as strict JSON to ``path`` atomically (see :func:`write_text_atomic`)."""
    return write_text_atomic(path, dumps_strict(obj, indent=indent))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temp file and a rename.

    A reader sees the old file or the new one, never half of one; on any error (disk full) the
    temp file is removed and an OSError naming the path is raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(err.errno, f"disk full while writing {path}") from None
        raise
    return path


# ------------------------------------------------------------------------------------ CLI errors
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, LookupError, RuntimeError)
"""What :func:`cli_errors` turns into one line: bad values, files, missing keys, failed backends.

(Library errors such as DatasetError, ContractError, CheckpointError subclass ValueError.)"""


def one_line(err: BaseException) -> str:
    """The first line of ``str(err)``, with the type for bare OS errors (``FileNotFoundError: x``)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text = f"{text}: {err.filename}"
    if isinstance(err, OSError) and not isinstance(err, OutputPathError) and type(err).__name__ not in text:
        text = f"{type(err).__name__}: {text}"
    return text if len(text) <= 400 else text[:397] + "..."


@contextlib.contextmanager
def cli_errors(debug: bool = False, prog: str | None = None, extra: tuple[type[BaseException], ...] = ()):
    """Run a CLI's work; known errors become ``error: <one line>`` on stderr and ``SystemExit(2)``.

    Ctrl-C (and SIGTERM, turned into KeyboardInterrupt here) becomes ``interrupted`` and exit 130.
    With ``debug`` the traceback is printed before the line. Unknown exceptions (bugs) propagate
    with their traceback, as they should.

    Args:
        debug: also print the traceback (a CLI's ``--debug``/``-v``).
        prog: prefix for the line (default: the program name).
        extra: more exception types to treat as user errors.
    """
    name = prog or Path(sys.argv[0]).stem or "error"
    previous = None
    with contextlib.suppress(ValueError):  # not the main thread: leave SIGTERM alone
        previous = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    try:
        yield
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"{name}: interrupted", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except USER_ERRORS + tuple(extra) as err:
        if debug:
            traceback.print_exc()
        print(f"{name}: error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    finally:
        if previous is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, previous)


def _sigterm_to_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")
