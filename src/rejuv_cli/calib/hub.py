"""Calibration data from a Hugging Face Hub dataset: `org/name` or `org/name@revision`.

Resolved like a model argument (checkpoint/resolve.py): a path that exists locally wins, and
huggingface_hub.snapshot_download does the rest, so the usual cache, HF_HOME, HF_TOKEN and
HF_HUB_OFFLINE=1 behave as users expect. Only the data files (*.jsonl, *.json, *.parquet) are
fetched; files.pick_data_file chooses the one to read.
"""

from __future__ import annotations

import re
from pathlib import Path

from rejuv_cli.calib.files import DATA_SUFFIXES
from rejuv_cli.errors import CalibError, first_line

DATA_PATTERNS = [f"*{s}" for s in DATA_SUFFIXES]  # fnmatch: `*` also matches folders
_DATASET_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def dataset_id(spec: str) -> tuple[str, str | None] | None:
    """(repo_id, revision or None) when `spec` reads as a Hub dataset id `org/name[@rev]`;
    None for what can only be a path (starts with . / ~, more folders, a data-file suffix)."""
    repo_id, _, revision = spec.partition("@")
    if spec.startswith((".", "/", "~")) or not _DATASET_ID.match(repo_id):
        return None
    if repo_id.lower().endswith(DATA_SUFFIXES):
        return None
    return repo_id, revision or None


def hub_label(repo_id: str, revision: str | None, name: str) -> str:
    """A file of a Hub dataset as huggingface_hub's file system names it:
    hf://datasets/org/name@rev/path (sources and messages start with it)."""
    at = f"@{revision}" if revision else ""
    return f"hf://datasets/{repo_id}{at}/{name}"


def download_dataset(spec: str, repo_id: str, revision: str | None) -> Path:
    """The local snapshot folder of the dataset's data files (downloaded, or from the cache)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    what = f"calibration data {spec}"
    get = f"`hf download {repo_id} --repo-type dataset`"
    try:
        local = snapshot_download(
            repo_id, repo_type="dataset", revision=revision, allow_patterns=DATA_PATTERNS
        )
    except GatedRepoError as e:
        raise CalibError(
            f"{what}: gated Hub dataset; accept its terms on the Hub and set HF_TOKEN"
        ) from e
    except RepositoryNotFoundError as e:
        raise CalibError(
            f"{what}: no such file, and no such Hub dataset (or it is private: set HF_TOKEN); "
            "pass a JSONL or Parquet file, a Hub dataset id org/name[@revision] or builtin:math"
        ) from e
    except RevisionNotFoundError as e:
        raise CalibError(f"{what}: revision {revision!r} not found in dataset {repo_id}") from e
    except LocalEntryNotFoundError as e:
        if getattr(e, "snapshot_path", None):  # IncompleteSnapshotError (hub >= 1.x)
            again = f"{get[:-1]} --revision {Path(e.snapshot_path).name}`"
            raise CalibError(
                f"{what}: {first_line(e)} (run {again} where there is network)"
            ) from None
        offline = " (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else ""
        raise CalibError(
            f"{what}: no such file, and the dataset is not in the local Hub cache and the Hub "
            f"cannot be reached{offline}. Run {get} where there is network, or pass a local file."
        ) from e
    except OSError as e:
        raise CalibError(f"{what}: download failed: {first_line(e)}") from e
    return Path(local)
