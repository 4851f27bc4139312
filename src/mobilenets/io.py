"""Files written whole or not at all, and directories written by one process at a time.

Every file the package writes (weights, run descriptions, metrics, figures, ONNX models,
benchmark results) goes through :func:`atomic_path`: a temporary name in the same directory,
fsync, rename. A process killed mid-write leaves the previous complete file, never half of a
new one, and a reader never sees a partial file. A write that fails (a full disk, a file-size
limit, a read-only directory) removes its temporary file, leaves the previous file as it was,
and raises one line naming the path and the cause.

:class:`DirectoryLock` keeps a second writer out of a directory (a training run): an advisory
lock file holding the owner's pid and host, created atomically; a lock left by a process that
no longer runs on this host is taken over with a warning. Readers take no lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mobilenets.errors import MobileNetError


def _umask() -> int:
    """The process umask (reading it means setting it, so set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto it.

    On any exception the temporary file is removed and ``path`` is untouched; an ``OSError``
    (no space left, file too large, read-only file system, permission denied) becomes a
    :class:`MobileNetError` naming ``path`` and the cause. Writers that do their own I/O in C
    or Rust should hand Python the bytes (``tmp.write_bytes``) or a Python file object, so a
    failed write arrives here as the ``OSError`` it is.
    """
    path = Path(path)
    tmp_path: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the mode a plain open() would have.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except OSError as e:
        raise write_error(path, e) from None
    finally:
        if tmp_path is not None:
            with contextlib.suppress(OSError):  # on a read-only disk there is nothing to remove
                tmp_path.unlink(missing_ok=True)


def write_error(path: str | os.PathLike[str], error: OSError) -> MobileNetError:
    """The one line for a write that failed: the path, the cause, and what was kept."""
    cause = error.strerror or str(error)
    return MobileNetError(f"cannot write {path}: {cause} (the previous file, if any, is kept)")


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` whole or not at all."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


# --------------------------------------------------------------------------- one writer


LOCK_FILE = ".lock"


def host_name() -> str:
    """This machine's name, as ``socket.gethostname()`` gives it (without importing socket,
    which the CLI's start-up would pay for)."""
    return os.uname().nodename if hasattr(os, "uname") else platform.node()


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (one we may not signal still runs)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DirectoryLock:
    """An advisory lock on a directory: one writer at a time, readers never wait.

    ``acquire`` creates ``<directory>/.lock`` holding ``{"pid", "host"}``. The file is written
    whole under a temporary name and hard-linked into place, which fails atomically when the
    lock exists, so two processes can never both hold it and nobody reads half a lock. A lock
    whose pid no longer runs on this host is stale (a killed run): it is taken over with a
    warning. A lock held by a live process, or by another host (whose processes cannot be
    checked), refuses with one line naming the holder. ``release`` removes the lock only
    while it is still this holder's.
    """

    def __init__(self, directory: str | os.PathLike[str], what: str = "run") -> None:
        self.directory, self.what = Path(directory), what
        self.path = self.directory / LOCK_FILE
        self.owner = {"pid": os.getpid(), "host": host_name()}
        self.held = False
        self.created = False  # the directory was made for this lock

    def __enter__(self) -> DirectoryLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def holder(self) -> dict[str, Any] | None:
        """The lock's content, None when there is no lock; ``{}`` when it is unreadable."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def is_stale(self, holder: dict[str, Any]) -> bool:
        pid = holder.get("pid")
        return (
            holder.get("host") == self.owner["host"]
            and isinstance(pid, int)
            and pid != os.getpid()
            and not _alive(pid)
        )

    def acquire(self) -> None:
        try:
            self.created = not self.directory.exists()
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(self.directory, e) from None
        for _ in range(3):  # a stale lock taken over by another process in between: look again
            if self._link():
                self.held = True
                return
            holder = self.holder()
            if holder is None:
                continue  # released in between
            if not self.is_stale(holder):
                raise MobileNetError(self._refusal(holder))
            warnings.warn(
                f"{self.path}: taking over the lock of process {holder['pid']}, which no "
                f"longer runs (a killed {self.what}?)",
                stacklevel=2,
            )
            self._remove_if(holder)
        raise MobileNetError(f"{self.directory} is being locked and unlocked by other processes")

    def _link(self) -> bool:
        """Create the lock whole, atomically; False when one exists."""
        tmp: str | None = None
        try:
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f"{LOCK_FILE}.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(self.owner))
            os.link(tmp, self.path)
        except FileExistsError:
            return False
        except OSError as e:
            raise write_error(self.path, e) from None
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        return True

    def _remove_if(self, holder: dict[str, Any]) -> None:
        """Remove the lock if it still holds ``holder`` (not a lock taken since)."""
        if self.holder() == holder:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def _refusal(self, holder: dict[str, Any]) -> str:
        if not holder:
            return (
                f"{self.directory} is locked by {self.path}, which is unreadable; remove it if "
                f"no process writes to {self.directory}"
            )
        where = "this host" if holder.get("host") == self.owner["host"] else holder.get("host")
        return (
            f"{self.directory} is in use by another {self.what} (process {holder.get('pid')} "
            f"on {where}); wait for it to end or pick another directory (lock: {self.path})"
        )

    def release(self) -> None:
        """Remove the lock; and the directory, if it was made for the lock and stayed empty
        (a run that failed before its first checkpoint leaves nothing behind)."""
        if self.held:
            self._remove_if(self.owner)
            self.held = False
            if self.created:
                with contextlib.suppress(OSError):  # not empty: it holds a run
                    self.directory.rmdir()
