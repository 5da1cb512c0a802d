"""One writer per run folder or output file, and clean-up of the temporary files of killed processes.

A command that writes a run folder (``nasforge run``, ``train``, ``prune``, ``search``) holds :func:`run_lock`
on it for its whole run; a command that writes one file (``export``, ``quantize``) holds :func:`file_lock` on
that file. A second writer fails at once with a one-line :class:`~nasforge.errors.ConfigError` that names the
holder (command, PID, host, start time) instead of silently sharing checkpoints, studies and scratch files.

On POSIX the lock is an advisory ``flock`` on a small lock file (``.nasforge.lock`` in the folder,
``.NAME.nasforge.lock`` next to a file) that also records the holder as JSON. The kernel drops the lock when
its process dies (SIGKILL included), so a lock left by a killed run is simply taken over; the lock file is
removed on a clean release. Without ``fcntl`` (Windows) the lock file is created with ``O_EXCL`` and a
leftover one is taken over once the process it names is gone.

Temporary files and folders made next to a destination carry their owner in their name
(:func:`temp_prefix`: ``.nasforge-tmp-<pid>-<host tag>-<label>-``), so :func:`remove_stale_temps` can delete
those of dead processes on this host, never those of a live one.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from nasforge.errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows: O_EXCL lock files with a PID liveness check
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "TEMP_PREFIX", "file_lock", "host_tag", "pid_alive", "remove_stale_temps", "run_lock",
           "temp_prefix"]

LOCK_NAME = ".nasforge.lock"
TEMP_PREFIX = ".nasforge-tmp-"
_TEMP_RE = re.compile(r"^\.nasforge-tmp-(\d+)-([0-9a-f]{8})-")
_ATTEMPTS = 20  # lock files that vanish or change under us while we look: retry this often
_EMPTY_STALE_S = 10.0  # an O_EXCL lock file still empty after this long belongs to a process killed at birth

Record = dict[str, Any]


# -- processes -------------------------------------------------------------------------------------------------
def host_tag() -> str:
    """8 hex digits naming this host and PID namespace: PIDs recorded in names are compared only within it."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return hashlib.sha256(f"{socket.gethostname()}|{namespace}".encode()).hexdigest()[:8]


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is running (a zombie counts as dead; one we may not signal, alive)."""
    if pid <= 0:
        return False
    if os.name == "nt":
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _windows_pid_alive(pid: int) -> bool:  # pragma: no cover - Windows only
    import ctypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() == 5  # access denied: it exists
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


# -- temporary files -------------------------------------------------------------------------------------------
def temp_prefix(label: str) -> str:
    """Name prefix for a temporary file or folder of this process: ``.nasforge-tmp-<pid>-<host tag>-<label>-``.

    Pass it as ``prefix`` to :func:`tempfile.mkdtemp` / :func:`tempfile.mkstemp`; ``label`` (e.g. the command or
    the destination's name) only helps a reader and is shortened to 64 characters.
    """
    return f"{TEMP_PREFIX}{os.getpid()}-{host_tag()}-{label[:64]}-"


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files and folders (:func:`temp_prefix`) in ``folder`` whose process is dead.

    Only names made on this host (and PID namespace) are considered; those of live processes are kept.
    Returns what was removed; a missing folder or an entry that cannot be removed is skipped.
    """
    tag, removed = host_tag(), []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        match = _TEMP_RE.match(entry.name)
        if match is None or match[2] != tag or pid_alive(int(match[1])):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed


# -- locks -----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def run_lock(folder: str | os.PathLike[str], command: str) -> Iterator[Path]:
    """Hold the exclusive lock on the run folder ``folder`` (created if missing) for the ``with`` body.

    Take it before anything is written and before checking what the folder holds. A folder this call created
    is removed again on exit if it is still empty (a failed start leaves nothing behind).

    Args:
        folder: the run folder (``--out``).
        command: what holds it, for the message of a second writer (e.g. ``"nasforge run"``).

    Raises:
        ConfigError: another process holds the lock (the message names its command, PID, host and start time),
            or ``folder`` is not a folder / cannot be locked.
    """
    folder = Path(folder)
    with _locked(folder / LOCK_NAME, command, f"run folder {folder} is in use by"):
        yield folder


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str], command: str) -> Iterator[Path]:
    """Hold the exclusive lock on the output file ``path`` (lock file ``.NAME.nasforge.lock`` next to it).

    For commands that write one destination and the files that belong to it (an ONNX file and its engine, an
    INT8 file and its report): other files in the same folder stay free for other processes. Its folder is
    created if missing and removed again on exit if still empty.

    Raises:
        ConfigError: another process is writing ``path`` (the message names it).
    """
    path = Path(path)
    with _locked(path.parent / f".{path.name}{LOCK_NAME}", command, f"{path} is being written by"):
        yield path


@contextlib.contextmanager
def _locked(lock: Path, command: str, busy: str) -> Iterator[None]:
    created = _make_dirs(lock.parent)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "host_tag": host_tag(), "command": command,
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    try:
        acquire = _acquire_flock if fcntl is not None else _acquire_exclusive
        release = acquire(lock, record, lambda holder: _busy_message(busy, holder))
    except BaseException:
        _remove_dirs(created)
        raise
    try:
        yield
    finally:
        release()
        _remove_dirs(created)


def _make_dirs(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns the ones created, deepest first."""
    missing, p = [], folder
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"{folder} exists and is not a folder; choose another --out") from None
    except OSError as err:
        raise ConfigError(f"cannot create {folder} ({err.strerror}); choose a writable --out") from None
    return missing


def _remove_dirs(created: list[Path]) -> None:
    for folder in created:
        try:
            folder.rmdir()
        except OSError:  # not empty (the command wrote something), or already gone
            return


def _busy_message(busy: str, holder: Record | None) -> str:
    if holder is None:
        who = "another nasforge process (it is starting)"
    else:
        who = (f"`{holder.get('command', 'nasforge')}` (PID {holder.get('pid', '?')} on "
               f"{holder.get('host', '?')}, since {_since(str(holder.get('started', '')))})")
    return f"{busy} {who}; wait for it to finish or choose another --out"


def _since(started: str) -> str:
    try:
        when = datetime.datetime.fromisoformat(started)
    except ValueError:
        return started or "?"
    today = datetime.datetime.now(when.tzinfo).date()
    return when.strftime("%H:%M:%S" if when.date() == today else "%Y-%m-%d %H:%M:%S")


def _read_record(lock: Path, tries: int = 10) -> Record | None:
    """The holder's record; ``None`` while it is still being written. Raises FileNotFoundError if gone."""
    for _ in range(tries):
        text = lock.read_text(encoding="utf-8", errors="replace")
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            time.sleep(0.02)  # written right after the lock is taken: give the holder a moment
            continue
        return record if isinstance(record, dict) else None
    return None


# -- POSIX: flock ----------------------------------------------------------------------------------------------
def _acquire_flock(lock: Path, record: Record, busy: Callable[[Record | None], str]) -> Callable[[], None]:
    """Lock ``lock`` with flock and write ``record`` into it; returns the release function."""
    for _ in range(_ATTEMPTS):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # its folder was just removed by a releasing holder that created it
            _make_dirs(lock.parent)
            continue
        except OSError as err:
            raise ConfigError(f"cannot create the lock file {lock} ({err.strerror}); choose a writable --out"
                              ) from None
        if not _try_flock(fd, lock):
            os.close(fd)
            try:
                holder = _read_record(lock)
            except FileNotFoundError:  # released while we looked: try again
                continue
            raise ConfigError(busy(holder))
        if not _same_file(fd, lock):  # we locked a file its holder removed while releasing it
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(record).encode())
        return lambda: _release_flock(fd, lock)
    raise ConfigError(f"cannot take the lock {lock}: it keeps changing; retry, or choose another --out")


def _try_flock(fd: int, lock: Path) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        os.close(fd)
        raise ConfigError(f"cannot lock {lock}: its file system refuses file locks ({err.strerror}); write to a "
                          "folder on a local disk (--out)") from None
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def _release_flock(fd: int, lock: Path) -> None:
    # Unlink while still holding the lock: a process that opened this file meanwhile finds, once it gets the
    # lock, that the path no longer names it (_same_file) and locks a fresh file instead.
    try:
        if _same_file(fd, lock):
            os.unlink(lock)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- without fcntl: O_EXCL lock files --------------------------------------------------------------------------
def _acquire_exclusive(lock: Path, record: Record, busy: Callable[[Record | None], str]) -> Callable[[], None]:
    """Create ``lock`` exclusively with ``record`` in it, taking over one whose process is gone."""
    for _ in range(_ATTEMPTS):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            _make_dirs(lock.parent)
            continue
        except FileExistsError:
            try:
                holder = _read_record(lock)
                stale = _is_stale(lock, holder)
            except FileNotFoundError:
                continue
            if not stale:
                raise ConfigError(busy(holder)) from None
            _take_over(lock, holder)
            continue
        except OSError as err:
            raise ConfigError(f"cannot create the lock file {lock} ({err.strerror}); choose a writable --out"
                              ) from None
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(record, fh)
        return lambda: _release_exclusive(lock, record)
    raise ConfigError(f"cannot take the lock {lock}: it keeps changing; retry, or choose another --out")


def _is_stale(lock: Path, holder: Record | None) -> bool:
    if holder is None:  # still empty: stale only if its creator died before writing it
        return time.time() - lock.stat().st_mtime > _EMPTY_STALE_S
    if holder.get("host_tag") != host_tag():
        return False  # another host's process: it cannot be checked from here
    return not pid_alive(int(holder.get("pid", 0)))


def _take_over(lock: Path, holder: Record | None) -> None:
    """Move the stale ``lock`` aside; if another process replaced it meanwhile, put that one back."""
    aside = lock.with_name(f"{lock.name}.{os.getpid()}.stale")
    try:
        os.replace(lock, aside)
    except FileNotFoundError:
        return
    try:
        moved = _read_record(aside, tries=1)
    except OSError:
        moved = None
    if moved != holder:  # a fresh lock of a live process: restore it (never over a newer one)
        with contextlib.suppress(OSError):
            os.link(aside, lock)
    with contextlib.suppress(OSError):
        os.unlink(aside)


def _release_exclusive(lock: Path, record: Record) -> None:
    with contextlib.suppress(OSError):
        if _read_record(lock, tries=1) == record:
            os.unlink(lock)
