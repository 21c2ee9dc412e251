"""Calibration files on disk: JSON Lines text, Parquet tables, and the data file of a folder.

Reading only: each function returns raw text or rows, and data.py validates them into
examples. Parquet is recognized by its `.parquet` suffix or its magic bytes `PAR1`, so a
Parquet file under another name still reads as a table.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from rejuv_cli.errors import CalibError, first_line

if TYPE_CHECKING:
    from rejuv_cli.calib.fields import Fields

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")  # what a data folder's files may be
PARQUET_MAGIC = b"PAR1"
# A file of the train split, as the Hub's dataset viewer names them: train.jsonl,
# train-00000-of-00002.parquet, data/train/0000.parquet, ... ("train" as a word of the path).
_TRAIN = re.compile(r"(^|[/_.\-])train([/_.\-]|$)")


def is_parquet(path: Path) -> bool:
    """A `.parquet` name, or a file that starts with Parquet's magic bytes."""
    if path.suffix.lower() == ".parquet":
        return True
    try:
        with path.open("rb") as f:
            return f.read(4) == PARQUET_MAGIC
    except OSError:
        return False  # read_text reports it


def read_text(path: Path, label: str) -> str:
    """A JSON Lines file as text (UTF-8, a leading byte-order mark dropped)."""
    try:
        # utf-8-sig: a byte-order mark (Windows editors write one) is not part of line 1
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise CalibError(f"{label}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise CalibError(f"{label}: cannot read calibration file: {e.strerror or e}") from None


def read_parquet(
    path: Path, label: str, wanted: tuple[str, ...], limit: int | None
) -> tuple[list[str], list[dict]]:
    """(every column name, the first `limit` rows as dicts of the `wanted` columns present).

    Only the wanted columns are read, and only as many row groups as `limit` needs. A null
    cell is left out of its row's dict: a table has every column on every row, so null is how
    it says a field is absent (a table may mix prompt/response rows with messages rows).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
        names = list(table.schema_arrow.names)
        columns = [c for c in names if c in wanted]
        rows: list[dict] = []
        # No wanted column: no rows either (data.py reports the missing columns).
        for batch in table.iter_batches(batch_size=1024, columns=columns) if columns else ():
            rows += [{k: v for k, v in row.items() if v is not None} for row in batch.to_pylist()]
            if limit is not None and len(rows) >= limit:
                break
    except (pa.ArrowException, ValueError) as e:  # ArrowInvalid: no magic, a cut-off footer
        raise CalibError(f"{label}: not a readable Parquet file ({first_line(e)})") from None
    except OSError as e:
        raise CalibError(f"{label}: cannot read calibration file: {e.strerror or e}") from None
    return names, (rows if limit is None else rows[:limit])


def check_columns(names: list[str], label: str, f: Fields) -> None:
    """One error for a table without the columns of either format (rather than one per row)."""
    if f.messages in names or (f.prompt in names and f.response in names):
        return
    shown = ", ".join(repr(n)[:40] for n in names[:12]) or "none"
    shown += f", ... ({len(names) - 12} more)" if len(names) > 12 else ""
    if f.prompt in names or f.response in names:
        missing, flag = (f.response, "--response-field") if f.prompt in names else (
            f.prompt, "--prompt-field")  # fmt: skip
        raise CalibError(
            f"{label}: no column {missing!r}, which the {f.prompt}/{f.response} format needs "
            f"(columns: {shown}); name yours with {flag}"
        )
    raise CalibError(
        f"{label}: no column {f.messages!r}, nor {f.prompt!r} and {f.response!r} (columns: "
        f"{shown}); name yours with --messages-field, or --prompt-field and --response-field"
    )


def refuse_json_array(text: str, label: str) -> None:
    """One error for a file holding one JSON array (a common .json layout) instead of lines."""
    if not text.lstrip().startswith("["):
        return
    try:
        whole = json.loads(text)
    except (ValueError, RecursionError):
        return  # not one array: the line-by-line errors say what is wrong
    if isinstance(whole, list) and text.strip().count("\n"):
        raise CalibError(
            f"{label}: a JSON array, not JSON Lines; write one object per line (e.g. "
            "`jq -c '.[]' FILE`)"
        )


def data_files(folder: Path) -> list[str]:
    """The data files under `folder` (relative POSIX paths, sorted), hidden folders skipped."""
    found = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder).as_posix()
        hidden = any(part.startswith(".") for part in rel.split("/"))
        if not hidden and p.suffix.lower() in DATA_SUFFIXES and p.is_file():
            found.append(rel)
    return sorted(found)


def pick_data_file(folder: Path, label: str) -> tuple[str, str | None]:
    """The file of a dataset folder to read, and a note when there was a choice.

    The rule: the first file of the train split in sorted order (a path with the word
    "train"), else the first data file in sorted order.
    """
    files = data_files(folder)
    if not files:
        raise CalibError(
            f"{label}: no data files ({', '.join('*' + s for s in DATA_SUFFIXES)}) in the "
            "dataset; pass a JSONL or Parquet file instead"
        )
    if len(files) == 1:
        return files[0], None
    train = [f for f in files if _TRAIN.search(f.lower())]
    chosen = (train or files)[0]
    why = "the first train-split file" if train else "no train-split file; the first"
    shown = ", ".join(files[:5]) + (f", ... ({len(files) - 5} more)" if len(files) > 5 else "")
    note = (f"{label}: {len(files)} data files ({shown}); using {chosen} ({why} in sorted "
            "order); to read another, download it and pass its path to --calib")  # fmt: skip
    return chosen, note
