"""Refuse, before any work starts, an output that would destroy an input, be lost, or cannot be
written.

Each command lists every path it reads and every path it writes and calls `check_outputs` before
it reads a tensor; a command that resolves Hub ids calls it again with the snapshot directories.
A future command (sweep, report) does the same with its own lists. Rules:
- an output must not be, be inside, or contain an input; a directory input also protects the
  files its links point to (a Hub snapshot's `../../blobs/<hash>`);
- outputs must not be, or be inside, one another: a file inside `--out` would be lost when the
  finished temporary directory replaces OUT;
- `--out` must not be, or contain, the current directory, nor be a mount point (the final swap
  renames a sibling over it);
- each output's directory must be a writable directory.
Paths are compared after resolving symbolic links (an output that is a link is written through
it, as `output.write_file` and `output.output_dir` do) and by (device, inode), so bind mounts and
case-insensitive filesystems cannot hide a match.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from rejuv_cli.errors import OutputError


@dataclass(frozen=True)
class Output:
    """A path a command writes. `flag` names it in messages (`--out`, `--save-mask`, ...)."""

    flag: str
    path: Path
    directory: bool = False  # replaced whole when the run ends (fuse --out); else one file


def check_outputs(
    inputs: Mapping[str, Path | str | None],
    outputs: Iterable[Output | None],
    overwrite: bool = False,
) -> None:
    """Raise OutputError (one line) for the first output that overlaps an input or another
    output, or cannot be written. `inputs`: label -> file or directory (None, or a path that
    does not exist, e.g. a Hub id before it is resolved, is skipped)."""
    outs = [o for o in outputs if o is not None]
    protected = list(_expand(inputs))
    for o in outs:
        real = real_path(o.path)
        for label, path in protected:
            _refuse_overlap(o, real, label, path)
    for i, a in enumerate(outs):
        for b in outs[i + 1 :]:
            _refuse_nested(a, b)
    for o in outs:
        _check_location(o, real_path(o.path), overwrite)


def real_path(path: Path | str) -> Path:
    """Absolute, every symbolic link resolved (also a dangling final one)."""
    return Path(os.path.realpath(path))


# ---- overlap ------------------------------------------------------------------------------------
def _key(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _chain(path: Path) -> set[tuple[int, int]]:
    """(device, inode) of `path` and of each of its existing ancestors."""
    return {k for p in (path, *path.parents) if (k := _key(p)) is not None}


def relation(a: Path, b: Path) -> str | None:
    """How real path `a` stands to real path `b`: "same", "inside" (a is inside b), "contains"
    (b is inside a), or None."""
    if a == b:
        return "same"
    if a.is_relative_to(b):
        return "inside"
    if b.is_relative_to(a):
        return "contains"
    ka, kb = _key(a), _key(b)
    if ka is not None and ka == kb:
        return "same"
    if kb is not None and kb in _chain(a.parent):
        return "inside"
    if ka is not None and ka in _chain(b.parent):
        return "contains"
    return None


def _expand(inputs: Mapping[str, Path | str | None]) -> Iterator[tuple[str, Path]]:
    """(label, real path) of each existing input, plus the targets of the links inside an input
    directory (a Hub snapshot's blobs live outside it)."""
    for label, given in inputs.items():
        if given is None or not os.path.exists(os.path.expanduser(given)):
            continue
        real = real_path(os.path.expanduser(given))  # inputs expand `~` as their readers do
        yield f"{label} ({given})", real
        if real.is_dir():
            yield from _link_targets(label, real)


def _link_targets(label: str, root: Path, limit: int = 10_000) -> Iterator[tuple[str, Path]]:
    """Targets of the links under `root`; the walk stops after `limit` entries (a checkpoint
    holds far fewer; a wrong argument such as `/` must not walk a whole disk)."""
    seen = 0
    for top, dirs, files in os.walk(root):
        dirs.sort()  # walk in a fixed order: the same message every time
        for name in sorted(dirs + files):
            seen += 1
            if seen > limit:
                return
            link = Path(top, name)
            if link.is_symlink():
                target = real_path(link)
                yield f"{label}'s {link.relative_to(root).as_posix()} (a link to {target})", target


def _refuse_overlap(o: Output, real: Path, label: str, path: Path) -> None:
    how = relation(real, path)
    if how == "same" and not o.directory and not path.is_dir():
        raise OutputError(f"{o.flag} {o.path} is {label}; writing it would destroy the input; "
                          "choose another path")  # fmt: skip
    if how == "inside" and not o.directory and real.is_file():
        name = real.relative_to(path).as_posix() if real.is_relative_to(path) else real.name
        raise OutputError(f"{o.flag} {o.path} would replace {name} in {label}; choose a path "
                          "outside it")  # fmt: skip
    if how in ("same", "inside"):
        kind = "a directory" if o.directory else "a path"
        raise OutputError(f"{o.flag} {o.path} is inside {label}; choose {kind} outside it")
    if how == "contains":
        raise OutputError(f"{label} is inside {o.flag} {o.path}; writing there would destroy "
                          "the input")  # fmt: skip


def _refuse_nested(a: Output, b: Output) -> None:
    how = relation(real_path(a.path), real_path(b.path))
    if how == "same":
        raise OutputError(f"{a.flag} {a.path} and {b.flag} {b.path} are the same path; give "
                          "each its own")  # fmt: skip
    inner, outer = (a, b) if how == "inside" else (b, a) if how == "contains" else (None, None)
    if outer is None:
        return
    if not outer.directory:
        raise OutputError(f"{inner.flag} {inner.path} is inside {outer.flag} {outer.path}, "
                          "which is written as a file; give them separate paths")  # fmt: skip
    raise OutputError(
        f"{inner.flag} {inner.path} is inside {outer.flag} {outer.path}: that directory is "
        "replaced whole when the run ends, so the file would be lost; write it outside "
        f"{outer.path}"
    )


# ---- can it be written --------------------------------------------------------------------------
def _check_location(o: Output, real: Path, overwrite: bool) -> None:
    if o.directory:
        _check_out_dir(o, real, overwrite)
    elif real.is_dir():
        raise OutputError(f"{o.flag} {o.path} is a directory; give a file name")
    if is_mount_point(real):
        raise OutputError(
            f"{o.flag} {o.path} is a mount point: rejuv writes a sibling and renames it into "
            "place, which a mount point refuses (Device or resource busy); write to a new "
            f"{'directory' if o.directory else 'file'} inside or beside it"
        )
    where = real.parent
    while not where.exists():
        where = where.parent
    if not where.is_dir():
        raise OutputError(f"{o.flag} {o.path}: {where} is a file, not a directory")
    if os.statvfs(where).f_flag & os.ST_RDONLY:
        raise OutputError(f"{o.flag} {o.path}: {_cannot(errno.EROFS, where)}")
    if not os.access(where, os.W_OK | os.X_OK):
        raise OutputError(f"{o.flag} {o.path}: {_cannot(errno.EACCES, where)}")


def _check_out_dir(o: Output, real: Path, overwrite: bool) -> None:
    cwd = real_path(os.getcwd())
    if relation(cwd, real) in ("same", "inside"):
        what = "is" if cwd == real else "contains"
        raise OutputError(
            f"{o.flag} {o.path} {what} the current directory ({cwd}): OUT is replaced whole by "
            "a new directory, which would leave you in a deleted one; run it from elsewhere or "
            f"name a new directory, e.g. {o.flag} ./rejuvenated"
        )
    if not real.exists():
        return
    if not real.is_dir():
        raise OutputError(f"{o.flag} {o.path} exists and is not a directory")
    if is_mount_point(real):
        return  # refused by the caller with its own message, before "already exists"
    if not overwrite:
        raise OutputError(f"{o.flag} {o.path} already exists; pass --overwrite to replace it")
    if not os.access(real, os.W_OK | os.X_OK):  # the previous output could not be removed
        raise OutputError(f"{o.flag} {o.path}: {_cannot(errno.EACCES, real, 'replace')}")


def _cannot(code: int, where: Path, verb: str = "create files in") -> str:
    hint = {errno.EROFS: "the filesystem is read-only; choose another location",
            errno.EACCES: "check the permissions, or choose another location"}[code]  # fmt: skip
    return f"cannot {verb} {where}: {os.strerror(code)}; {hint}"


def _mount_points() -> set[str]:
    """Mount points listed in /proc/self/mountinfo (Linux); os.path.ismount misses bind mounts
    within one filesystem."""
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return set()
    unescape = lambda s: re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), s)  # noqa: E731
    return {unescape(line.split()[4]) for line in text.splitlines() if len(line.split()) > 4}


def is_mount_point(path: Path) -> bool:
    """Whether `path` (a real path) is a mount point, a bind-mounted file included."""
    return path.exists() and (os.path.ismount(path) or str(path) in _mount_points())
