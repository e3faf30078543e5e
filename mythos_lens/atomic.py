"""Atomic file output: write beside the target, then rename, so a crash never leaves half a file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mythos_lens.errors import MythosLensError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in `path`'s folder; when the body succeeds it is made readable
    (0644, where ``mkstemp`` gives 0600) and renamed onto `path`; when it raises, it is removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented, key-sorted JSON to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


RUN_FILE = "run.json"
RUN_FORMAT = "mythos-lens-run/1"  # the marker of a directory this tool wrote (and may replace)


def read_run(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The ``run.json`` of an output directory this tool wrote, or None for any other directory."""
    path = Path(directory) / RUN_FILE
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) and raw.get("format") == RUN_FORMAT else None


def check_output_dir(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Validate an output directory before any work; returns it as an absolute path.

    Refused: the current directory or one containing it, an existing path (unless `overwrite`
    and it is a directory this tool wrote: :func:`read_run`), and a parent this process cannot
    create or write to."""
    path = Path(out).expanduser()
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents or resolved.parent == resolved:
        raise MythosLensError(
            f"output directory {str(out)!r} is the current directory or contains it",
            "a new directory such as runs/analyze",
        )
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise MythosLensError(f"{out} exists", "a new output directory, or --overwrite")
        if not path.is_dir() or read_run(path) is None:
            raise MythosLensError(
                f"{out} exists and was not written by mythos-lens (no {RUN_FILE} of format "
                f"{RUN_FORMAT!r}); --overwrite replaces only directories this tool wrote",
                "a new output directory",
            )
    parent = resolved.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MythosLensError(
            f"cannot create {str(parent)!r} ({exc.strerror})", "a writable output location"
        ) from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MythosLensError(f"cannot write to {str(parent)!r}", "a writable output location")
    return resolved


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive advisory lock on `directory` itself (no lock file is left behind)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the rename below is still atomic
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class AtomicDir:
    """Write into a fresh temporary sibling of ``out``; rename it onto ``out`` on success, remove
    it on any exception or SIGTERM (so an interrupted run leaves nothing behind).

    ``out`` is validated at construction (:func:`check_output_dir`), before any work. The final
    rename fails clearly — never silently replacing another run's results — when ``out``
    appeared meanwhile, or (with ``overwrite``) when it changed since this run started; the
    results are then kept in a visible ``<out>.conflict-<time>`` sibling. Use :meth:`write_run`
    for ``run.json``, the marker that lets a later ``overwrite`` replace this directory.
    """

    def __init__(self, out: str | os.PathLike, overwrite: bool = False) -> None:
        self.out = check_output_dir(out, overwrite)
        self.overwrite = overwrite
        self.run_id = uuid.uuid4().hex
        before = read_run(self.out)
        self._replaces = None if before is None else before.get("run_id", "")
        self.tmp: Path | None = None
        self._old_handler: Any = None

    def write_run(self, meta: dict[str, Any]) -> Path:
        """Write ``run.json`` (`meta` plus this tool's format marker and run id) into the
        temporary directory."""
        assert self.tmp is not None, "write_run inside the with-block"
        path = self.tmp / RUN_FILE
        write_json_atomic(path, {**meta, "format": RUN_FORMAT, "run_id": self.run_id})
        return path

    def __enter__(self) -> Path:
        try:
            self.tmp = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=f".{self.out.name}.tmp-"))
        except OSError as exc:
            raise MythosLensError(
                f"cannot write to {str(self.out.parent)!r} ({exc.strerror})",
                "a writable output location",
            ) from None
        if threading.current_thread() is threading.main_thread():
            self._old_handler = signal.signal(signal.SIGTERM, _raise_on_sigterm)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if self._old_handler is not None:
            signal.signal(signal.SIGTERM, self._old_handler)
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if read_run(self.tmp) is None:
            self.write_run({})
        with _locked(self.out.parent):
            current = read_run(self.out)
            if self.overwrite and current is not None:
                if current.get("run_id", "") != self._replaces:
                    self._conflict("was replaced by another run while this run was working")
                old = self.out.parent / f".{self.out.name}.old-{self.run_id[:8]}"
                os.rename(self.out, old)
                os.rename(self.tmp, self.out)
                shutil.rmtree(old, ignore_errors=True)
                return
            try:
                os.rename(self.tmp, self.out)  # fails onto a non-empty directory (POSIX)
            except OSError:
                self._conflict("appeared while this run was working (another run?)")

    def _conflict(self, what: str) -> None:
        assert self.tmp is not None
        stamp = time.strftime("%Y%m%dT%H%M%S")
        keep = self.out.parent / f"{self.out.name}.conflict-{stamp}-{self.run_id[:6]}"
        os.rename(self.tmp, keep)
        raise MythosLensError(
            f"{self.out} {what}; this run's results are in {keep}",
            "one run at a time per output directory",
        )


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C, so every cleanup runs
