"""Writing outputs so that a failure, a kill or a full disk never leaves a partial or mixed one.

Every file and directory rejuv writes goes through here:
- `output_dir(out)`: a temporary sibling `.OUT.rejuv-tmp-HOST-PID`, swapped into place at the
  end with one atomic `renameat2(RENAME_EXCHANGE)` where the filesystem supports it, else with
  two renames that the next run finishes if a kill falls between them;
- `write_file(path, data)`: a temporary sibling file replaced into place.
Temporary names carry the host and PID, so the next run to the same OUT removes what a killed
run (SIGKILL, the out-of-memory killer) left behind, and never what belongs to a live process or
to another host (a shared filesystem). A lock file serialises runs writing the same OUT.
Any OSError while writing becomes one OutputError line that names the path.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import re
import shutil
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from rejuv_cli.checkpoint.disk import describe_os_error
from rejuv_cli.errors import OutputError

TMP_TAG = "rejuv-tmp"  # .NAME.rejuv-tmp-HOST-PID: being written
OLD_TAG = "rejuv-old"  # .NAME.rejuv-old-HOST-PID: the previous OUT, during a two-rename swap
LOCK_TAG = "rejuv-lock"  # .NAME.rejuv-lock: held (flock) while a run writes NAME


def note_to_stderr(line: str) -> None:
    """Where notes about cleaned-up leftovers go unless a command passes its own `say`."""
    print(f"note: {line}", file=sys.stderr)


def host_tag() -> str:
    """This host's name, reduced to characters that are safe in a file name."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "localhost"


def sibling(path: Path, tag: str, pid: int | None = None) -> Path:
    """The hidden sibling of `path` that rejuv uses for `tag`, owned by this host and `pid`."""
    return path.parent / f".{path.name}.{tag}-{host_tag()}-{pid or os.getpid()}"


# ---- leftovers of killed runs -------------------------------------------------------------------
def _owner(path: Path, target: Path, tag: str) -> tuple[str, int] | None:
    """(host, pid) when `path` is a `tag` sibling of `target`, else None."""
    prefix = f".{target.name}.{tag}-"
    if not path.name.startswith(prefix):
        return None
    host, _, pid = path.name[len(prefix) :].rpartition("-")
    return (host, int(pid)) if host and pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _stale(path: Path, target: Path, tag: str) -> int | None:
    """The PID of a dead process on this host that left `path`, else None."""
    owner = _owner(path, target, tag)
    if owner is None or owner[0] != host_tag() or owner[1] == os.getpid() or _alive(owner[1]):
        return None
    return owner[1]


def recover_leftovers(target: Path, say: Callable[[str], None]) -> None:
    """Finish or undo what killed runs left next to `target` (a directory or a file).

    - a `rejuv-old` directory means a kill fell inside a two-rename swap: the new output was
      complete, so the swap is finished (or, if the new one is gone, the old one restored);
    - `rejuv-tmp` entries are incomplete outputs (or, after an exchange, the replaced old
      one): removed.
    Only entries of dead processes on this host are touched; each action is one line via `say`.
    """
    parent = target.parent
    if not parent.is_dir():
        return
    entries = sorted(parent.iterdir())
    for old in entries:
        pid = _stale(old, target, OLD_TAG)
        if pid is None:
            continue
        new = sibling(target, TMP_TAG, pid)
        if not target.exists() and new.is_dir():
            new.rename(target)
            say(f"finished the output swap of an interrupted run (pid {pid}): {target}")
        elif not target.exists():
            old.rename(target)
            say(f"restored {target} from an interrupted run (pid {pid})")
            continue
        _remove(old)
        say(f"removed the previous output left by an interrupted run (pid {pid}): {old}")
    for tmp in entries:
        pid = _stale(tmp, target, TMP_TAG)
        if pid is not None and (tmp.exists() or tmp.is_symlink()):
            _remove(tmp)
            say(f"removed the partial output of a killed run (pid {pid}): {tmp}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# ---- the lock ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    """Hold an exclusive flock on `.NAME.rejuv-lock` next to `target`; refuse if another run
    holds it. The lock file is removed at the end (a kill leaves it: unlocked and harmless)."""
    path = target.parent / f".{target.name}.{LOCK_TAG}"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputError(
                f"{target}: another rejuv run ({holder}) is writing it; wait for it to "
                "finish or choose another output"
            ) from None
        # The previous holder may have unlinked the file between our open and our flock.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        with contextlib.suppress(OSError):  # who holds it, for the message; a full disk may refuse
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"host {host_tag()}, pid {os.getpid()}".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


# ---- the swap ----------------------------------------------------------------------------------
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM/SIGHUP for the few syscalls of the swap: once it starts, the
    output is complete, and finishing it is what the user wants."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    try:
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in sigs}
    except ValueError:  # not the main thread: signals are delivered elsewhere anyway
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Make `tmp` the new `out`; at no instant is there no `out` (where exchange works)."""
    with _signals_ignored():
        if not out.exists():
            tmp.rename(out)
            return
        if _exchange(tmp, out):
            _remove(tmp)  # now holds the previous output; a kill here leaves a stale tmp
            return
        # Two renames: a kill in between leaves OLD + TMP and no OUT; the next run finishes it.
        old = sibling(out, OLD_TAG)
        out.rename(old)
        tmp.rename(out)
    _remove(old)


# ---- public ------------------------------------------------------------------------------------
@contextlib.contextmanager
def output_dir(
    out: Path, overwrite: bool, say: Callable[[str], None] = note_to_stderr
) -> Iterator[Path]:
    """Yield an empty temporary directory beside `out`; on success it becomes `out`.

    On any error or interrupt it is removed and an existing `out` is untouched. An OSError
    inside the block becomes one OutputError line naming the path.
    """
    # `--out latest` -> runs/v3: replace the directory, keep the link. Resolving also turns
    # `-o .` or `-o x/..` into a name with a parent, where the sibling can live.
    out = Path(os.path.realpath(out))
    tmp = sibling(out, TMP_TAG)
    made: list[Path] = []
    try:
        made = _make_parents(out.parent)
        with _locked(out):
            recover_leftovers(out, say)
            if out.exists() and not overwrite:
                raise OutputError(f"--out {out} already exists; pass --overwrite to replace it")
            _remove(tmp)
            tmp.mkdir()
            try:
                yield tmp
                _swap_into_place(tmp, out)
            finally:
                if tmp.exists():  # failed or interrupted: never leave a partial output
                    _remove(tmp)
            made = []  # success: keep the directories made for OUT
    except OSError as e:
        raise OutputError(describe_os_error(e, e.filename or out)) from None
    finally:
        _unmake(made)


def write_file(
    path: Path,
    data: bytes | str | Callable[[object], None],
    flag: str,
    say: Callable[[str], None] = note_to_stderr,
) -> None:
    """Write `path` atomically: a temporary sibling, then rename. `data` is the content, or a
    function that writes it to the open binary file. A symbolic link is written through (the
    file it points to is replaced, the link kept), like `--out`. OSError -> one OutputError
    line; directories made for it are removed again on failure."""
    target = Path(os.path.realpath(path))
    made: list[Path] = []
    try:
        made = _make_parents(target.parent)
        recover_leftovers(target, say)
        tmp = sibling(target, TMP_TAG)
        try:
            with open(tmp, "wb") as f:
                if callable(data):
                    data(f)
                else:
                    f.write(data.encode("utf-8") if isinstance(data, str) else data)
            os.replace(tmp, target)
            made = []
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as e:
        raise OutputError(f"{flag}: {describe_os_error(e, path)}") from None
    finally:
        _unmake(made)


def _make_parents(directory: Path) -> list[Path]:
    """mkdir -p `directory`; returns the directories it created, outermost first."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()][::-1]
    made = []
    try:
        for d in missing:
            try:
                d.mkdir()
            except FileExistsError:  # made meanwhile by someone else: theirs to keep
                continue
            made.append(d)
    except OSError:
        _unmake(made)
        raise
    return made


def _unmake(made: list[Path]) -> None:
    """Remove directories `_make_parents` created for an output that was not written."""
    for d in reversed(made):
        with contextlib.suppress(OSError):
            d.rmdir()
