"""Symbolic links in checkpoint directories: Hub cache snapshots, links whose target is gone.

huggingface_hub stores a download as models--{org}--{name}/snapshots/{commit}/FILE, each FILE a
relative link to ../../blobs/{hash}; a pruned or interrupted download leaves links to nothing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from rejuv_cli.errors import CheckpointError, RejuvError

COMMIT = re.compile(r"[0-9a-f]{40}")


def hub_snapshot_of(path: Path) -> tuple[str, str] | None:
    """(repo_id, commit) when `path` is a Hub cache snapshot directory,
    .../models--{org}--{name}/snapshots/{commit}; else None."""
    repo = path.parent.parent.name
    if path.parent.name != "snapshots" or not COMMIT.fullmatch(path.name):
        return None
    if not repo.startswith("models--") or len(repo) <= len("models--"):
        return None
    return "/".join(repo[len("models--") :].split("--")), path.name


def dangling(path: Path) -> bool:
    """Whether `path` is a link whose target does not exist."""
    return path.is_symlink() and not path.exists()


def dangling_link_error(
    root: Path, name: str, label: str, what: str, cls=CheckpointError, subject: str | None = None
) -> RejuvError:
    """The error for root/name, a link whose target does not exist. `subject` replaces the
    message's "LABEL ROOT" prefix; `cls` is the error class (a RejuvError)."""
    try:
        target = os.readlink(root / name)
    except OSError:
        target = "?"
    hub = hub_snapshot_of(root)
    again = f"run `hf download {hub[0]} --revision {hub[1]}`" if hub else "copy or download it"
    return cls(
        f"{subject or f'{label} {root}'}: {what} {name!r} is a link to {target!r}, which does "
        f"not exist (incomplete or pruned Hub download?); {again} again, or pass a complete "
        "directory"
    )
