"""One progress bar for every torchrun rank's writing: each rank counts the bytes it writes into
a small file in the shared temporary output directory, and rank 0 adds the other ranks' counts
to its own bar. The ranks already share that directory (their shards go there), so no
collective is needed while they work; rank 0 also reads the counts while it waits for the
others to finish (dist.while_waiting). The folder is removed before the output is renamed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from rejuv_cli import dist

FOLDER = ".rejuv-progress"  # inside the temporary output directory; never in OUT
INTERVAL = 0.5  # seconds between a rank's file updates and rank 0's reads


class SharedProgress:
    """The callback a rank's executor reports written bytes to (`progress(n)`). On rank 0 it
    advances `on_bytes` by its own bytes and, every INTERVAL, by what the other ranks' files
    add; on the others it rewrites this rank's file every INTERVAL."""

    def __init__(self, out_dir: Path, on_bytes: Callable[[int], None] | None):
        self.ranks = dist.current()
        self.folder = Path(out_dir) / FOLDER
        self.folder.mkdir(exist_ok=True)
        self.on_bytes = on_bytes or (lambda n: None)
        self.done = 0  # this rank's bytes
        self.others = 0  # the other ranks' bytes, as rank 0 last read them
        self.last = 0.0

    def __call__(self, n: int) -> None:
        self.done += n
        if self.ranks.main:
            self.on_bytes(n)
        if time.monotonic() - self.last < INTERVAL:
            return
        if self.ranks.main:
            self.poll()
        else:
            self._publish()

    def poll(self) -> None:
        """Rank 0: advance the bar by what the other ranks wrote since the last read."""
        self.last = time.monotonic()
        total = 0
        for rank in range(1, self.ranks.world):
            try:
                total += int((self.folder / f"rank-{rank}").read_text() or 0)
            except (OSError, ValueError):  # not written yet, or being replaced
                continue
        if total > self.others:
            self.on_bytes(total - self.others)
            self.others = total

    def finish(self) -> None:
        """This rank has written everything: its final count (rank 0 reads it at the end)."""
        if not self.ranks.main:
            self._publish()

    def close(self) -> None:
        """Rank 0, once every rank finished: the last counts, then the folder removed."""
        import shutil

        self.poll()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _publish(self) -> None:
        self.last = time.monotonic()
        path = self.folder / f"rank-{self.ranks.rank}"
        part = path.with_name(f".{path.name}.part")
        part.write_text(str(self.done))
        os.replace(part, path)  # rank 0 never reads half a number
