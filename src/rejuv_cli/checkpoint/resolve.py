"""Turn a model argument (local directory or Hub id[@revision]) into a local directory.

Hub ids go through huggingface_hub.snapshot_download, so the usual cache, HF_HOME, HF_TOKEN
and HF_HUB_OFFLINE=1 all behave as users expect. Only weights and metadata are fetched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from rejuv_cli.checkpoint.links import COMMIT, dangling, dangling_link_error, hub_snapshot_of
from rejuv_cli.errors import ResolveError

# What a checkpoint needs: weights, configs, tokenizer and chat-template files.
HUB_PATTERNS = [
    "*.safetensors",
    "*.json",
    "*.jinja",
    "*.model",
    "*.txt",
    "*.tiktoken",
    "*.md",
    "LICENSE*",
]
# Mistral-style repos also ship the same weights as consolidated*.safetensors, and Llama repos
# an original/ folder for other runtimes: skip them rather than download twice the bytes.
HUB_SKIP = ["consolidated*", "original/*"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


@dataclass(frozen=True)
class ResolvedModel:
    """A model argument and where it was found."""

    spec: str  # what the user typed
    path: Path  # local directory holding the checkpoint
    repo_id: str | None = None  # Hub id when it came from the Hub
    revision: str | None = None  # requested revision (branch, tag or commit)
    commit: str | None = None  # resolved commit hash of the snapshot

    def to_json(self) -> dict:
        return {
            "spec": self.spec,
            "path": str(self.path),
            "repo_id": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
        }


def resolve_model(spec: str, label: str) -> ResolvedModel:
    """Local directory if it exists, else a Hub repo id with an optional @revision."""
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ResolveError(f"{label} {spec} is a file; pass the checkpoint's directory")
        # Resolving the directory is safe: in a Hub cache only the files in it are links.
        real = path.resolve()
        hub = hub_snapshot_of(real)
        if hub:  # a snapshot directory given as a path: record where it came from
            return ResolvedModel(spec, real, repo_id=hub[0], commit=hub[1])
        return ResolvedModel(spec, real)
    repo_id, _, revision = spec.partition("@")
    looks_local = spec.startswith((".", "/", "~")) or spec.count("/") > 1
    if looks_local or not _REPO_ID.match(repo_id):
        raise ResolveError(
            f"{label} {spec!r}: no such directory, and not a Hub id (org/name[@rev])"
        )
    return _from_hub(spec, repo_id, revision or None, label)


def _from_hub(spec: str, repo_id: str, revision: str | None, label: str) -> ResolvedModel:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        local = snapshot_download(
            repo_id, revision=revision, allow_patterns=HUB_PATTERNS, ignore_patterns=HUB_SKIP
        )
    except GatedRepoError as e:
        raise ResolveError(
            f"{label} {spec}: gated repository; accept its terms on the Hub and set HF_TOKEN"
        ) from e
    except RepositoryNotFoundError as e:
        raise ResolveError(
            f"{label} {spec}: no such Hub repository (or it is private: set HF_TOKEN)"
        ) from e
    except RevisionNotFoundError as e:
        raise ResolveError(f"{label} {spec}: revision {revision!r} not found in {repo_id}") from e
    except LocalEntryNotFoundError as e:
        snapshot = getattr(e, "snapshot_path", None)  # IncompleteSnapshotError (hub >= 1.x)
        if snapshot:
            raise _incomplete(spec, repo_id, Path(snapshot), label, e) from None
        offline = " (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else ""
        raise ResolveError(
            f"{label} {spec}: not in the local Hub cache and the Hub cannot be reached{offline}. "
            f"Run `hf download {repo_id}` where there is network, or pass a local directory."
        ) from e
    except OSError as e:
        raise ResolveError(f"{label} {spec}: download failed: {e}") from e
    path = Path(local)
    # Snapshots live at .../snapshots/<commit>/: the folder name is the resolved commit.
    commit = path.name if COMMIT.fullmatch(path.name) else None
    return ResolvedModel(spec, path, repo_id, revision, commit)


def _incomplete(spec: str, repo_id: str, snapshot: Path, label: str, e) -> ResolveError:
    """huggingface_hub found the snapshot offline but files of it missing: name a link whose
    blob is gone (the usual cause: an interrupted download or a pruned cache)."""
    from rejuv_cli.errors import first_line

    for link in sorted(snapshot.rglob("*")):
        if dangling(link):
            name = link.relative_to(snapshot).as_posix()
            subject = f"{label} {spec} (cached snapshot {snapshot})"
            return dangling_link_error(snapshot, name, label, "file", ResolveError, subject)
    again = f"run `hf download {repo_id} --revision {snapshot.name}` where there is network"
    return ResolveError(f"{label} {spec}: {first_line(e)} ({again})")
