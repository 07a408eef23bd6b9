"""Atomic file writes: a temporary name in the same directory, fsync, then `os.replace`.

A reader (or a crash) therefore sees either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from captioner.errors import CaptionerError

LOCK_FILE = ".lock"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    The temporary name ends with `suffix`, by default that of `path` (Keras insists on `.keras`, `.weights.h5`).
    A full disk is a one-line CaptionerError, with `path` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".tmp{path.suffix if suffix is None else suffix}", dir=path.parent
    )
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        # mkstemp makes the file private (0600); give it the mode the old file had, or an ordinary 0644.
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except Exception as exc:
        if is_disk_full(exc):  # the old file is untouched; say so in one line
            raise CaptionerError(
                f"no space left on device while saving {path}; the previous version is kept; "
                f"free some space and run the same command again"
            ) from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` (an older one is removed only
    after the new one is in place), on error it is removed and `path` is as it was."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = path.with_name(f".{path.name}.old")
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except Exception as exc:
        if is_disk_full(exc):
            raise CaptionerError(
                f"no space left on device while writing {path}; the previous version is kept; "
                f"free some space and run the same command again"
            ) from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc`, or an exception it was raised from, is ENOSPC or EDQUOT (h5py and Keras wrap the OSError,
    some only in their message)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc) or "errno = 28" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete temporary files `atomic_path` left in `directory` when a process was killed mid-write.

    Call it only where no other writer can be at work in that directory (e.g. when training starts).
    """
    stale = [p for p in Path(directory).glob(".*.tmp*") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def busy_message(directory: str | os.PathLike, holder: str, doing: str = "trained") -> str:
    return f"{directory} is being {doing} by {holder}; wait for it to end, or choose another --run"


def lock_holder(directory: str | os.PathLike) -> str | None:
    """Who holds `directory_lock(directory)` now ("process 123 on host (since …)"), or None: a quick look
    that takes nothing (the lock is taken only by `directory_lock`)."""
    try:
        fd = os.open(Path(directory) / LOCK_FILE, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            return None
        return os.pread(fd, 300, 0).decode("utf-8", "replace").strip() or "another process"
    finally:
        os.close(fd)


@contextlib.contextmanager
def directory_lock(directory: str | os.PathLike, doing: str = "trained") -> Iterator[None]:
    """Hold an exclusive lock on `directory` (created if missing) for the duration, or fail at once.

    An OS lock (`fcntl.flock` on `directory/.lock`): the kernel drops it when the holder exits, however it
    exits (kill -9 included), so a stale lock never blocks the next process. The file names the holder, for the
    message the next process prints. A folder this call created and left empty (bar the lock) is removed.
    """
    directory = Path(directory)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 300, 0).decode("utf-8", "replace").strip() or "another process"
            raise CaptionerError(busy_message(directory, holder, doing)) from None
        os.ftruncate(fd, 0)
        os.pwrite(
            fd,
            f"process {os.getpid()} on {socket.gethostname()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode(),
            0,
        )
        yield
    finally:
        if created and [p.name for p in directory.iterdir()] == [LOCK_FILE]:
            (directory / LOCK_FILE).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                directory.rmdir()
        os.close(fd)


@contextlib.contextmanager
def update_lock(path: str | os.PathLike, timeout: float = 60.0) -> Iterator[None]:
    """Hold an exclusive lock for a read-modify-write of the file `path` (a feature cache's index, a run's
    metrics.json), waiting up to `timeout` seconds for another process (or thread) to finish its own.

    An OS lock on `path.lock` beside the file (`fcntl.flock`, dropped by the kernel when the holder dies), never
    the run's `.lock`: `train` holds that one for hours, and a second lock on it in the same process would wait for
    itself. The lock file stays (removing it would let two processes lock two different files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise CaptionerError(
                        f"{path} has been locked by another process for {timeout:.0f} s; is one stuck? "
                        f"(the lock is {path.name}.lock)"
                    ) from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
