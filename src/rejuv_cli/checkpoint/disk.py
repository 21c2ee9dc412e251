"""Disk facts for outputs: free space before writing, and one line for an OS error on a path."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from rejuv_cli.checkpoint.writer import format_size
from rejuv_cli.errors import OutputError, first_line


def describe_os_error(e: OSError, path: Path | str) -> str:
    """One line for an OSError on `path`: what happened and what to do."""
    what = e.strerror or first_line(e)
    hint = {
        errno.ENOSPC: "free space or choose another location",
        errno.EDQUOT: "the disk quota is exhausted; free space or choose another location",
        errno.EROFS: "the filesystem is read-only; choose another location",
        errno.EACCES: "check the permissions, or choose another location",
        errno.EPERM: "check the permissions, or choose another location",
        errno.EIO: "the device reported an I/O error; check the disk",
        errno.EBUSY: "it is a mount point or in use; write to a new path inside or beside it",
    }.get(e.errno, "check the path and retry")
    return f"cannot write {path}: {what}; {hint}"


def free_bytes(path: Path) -> tuple[int, Path]:
    """Bytes available to this user on the filesystem that would hold `path`, and the existing
    directory that was measured (the nearest existing ancestor)."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free, probe


def check_free_space(out: Path, needed: int, flag: str = "--out") -> None:
    """Refuse before writing when the filesystem of `out` has less than `needed` bytes free."""
    free, where = free_bytes(out)
    if needed > free:
        raise OutputError(
            f"{flag} {out}: not enough disk space: the output needs {format_size(needed)}, "
            f"{format_size(free)} is free on the filesystem of {where}; free space or choose "
            "another location"
        )
