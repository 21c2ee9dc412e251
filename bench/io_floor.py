"""The I/O floor of `rejuv fuse`: the same reads and writes with no math, for fuse_bench.py.

    python bench/io_floor.py BASE SFT --out OUT

Reads every tensor's bytes of both checkpoints (safetensors, sharded or not) and writes the SFT
tensors' raw bytes, behind each SFT shard's own header, into OUT: the byte volume `rejuv fuse`
moves (read BASE + SFT, write one model), streamed through one reusable buffer so memory stays
flat. No hashing, no dtype conversion, no finite checks: whatever rejuv takes beyond this is
its overhead. torch is imported though unused, so the interpreter start-up cost matches rejuv's.
The output is a byte-exact copy of SFT's shards (in storage order), which makes it checkable.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch  # noqa: F401 - start-up cost parity with rejuv, which imports torch to fuse

INDEX = "model.safetensors.index.json"


def read_header(path: Path) -> tuple[bytes, dict]:
    """(raw header bytes incl. the 8-byte length, parsed JSON) of one safetensors file."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        raw = f.read(int.from_bytes(prefix, "little"))
    return prefix + raw, json.loads(raw)


def tensor_table(model_dir: Path) -> dict[str, list[tuple[str, Path, int, int]]]:
    """shard file name -> [(tensor, file, absolute start, absolute stop)] in storage order."""
    if (model_dir / INDEX).is_file():
        weight_map = json.loads((model_dir / INDEX).read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    else:
        files = ["model.safetensors"]
    table = {}
    for fname in files:
        raw, header = read_header(model_dir / fname)
        entries = [
            (
                name,
                model_dir / fname,
                len(raw) + info["data_offsets"][0],
                len(raw) + info["data_offsets"][1],
            )
            for name, info in header.items()
            if name != "__metadata__"
        ]
        table[fname] = sorted(entries, key=lambda e: e[2])
    return table


class Reader:
    """pread-based reads of byte ranges into one reusable buffer (like rejuv's reader)."""

    def __init__(self, chunk_bytes: int):
        self.buf = bytearray(chunk_bytes)
        self.view = memoryview(self.buf)
        self.fds: dict[Path, int] = {}
        self.bytes_read = 0

    def chunks(self, path: Path, start: int, stop: int):
        """Yield memoryviews over [start, stop) of `path`, one buffer-full at a time."""
        fd = self.fds.get(path)
        if fd is None:
            fd = self.fds[path] = os.open(path, os.O_RDONLY)
        pos = start
        while pos < stop:
            want = min(len(self.buf), stop - pos)
            got = 0
            while got < want:
                n = os.preadv(fd, [self.view[got:want]], pos + got)
                if n <= 0:
                    raise OSError(f"{path}: unexpected end of file at byte {pos + got}")
                got += n
            self.bytes_read += want
            pos += want
            yield self.view[:want]

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)


def write_all(fd: int, data: memoryview | bytes) -> int:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.write(fd, view[done:])
    return done


def copy_floor(base_dir: Path, sft_dir: Path, out_dir: Path, chunk_bytes: int) -> tuple[int, int]:
    """Do the I/O; returns (bytes read, bytes written)."""
    base_where = {
        name: (path, lo, hi)
        for entries in tensor_table(base_dir).values()
        for name, path, lo, hi in entries
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    # Separate buffers for BASE and SFT, as rejuv keeps one per side.
    base_reader, sft_reader = Reader(chunk_bytes), Reader(chunk_bytes)
    written = 0
    try:
        for fname, entries in tensor_table(sft_dir).items():
            header, _ = read_header(sft_dir / fname)
            fd = os.open(out_dir / fname, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                written += write_all(fd, header)
                for name, path, lo, hi in entries:
                    if name in base_where:  # read BASE's copy too, then drop it: no math
                        for _ in base_reader.chunks(*base_where[name]):
                            pass
                    for chunk in sft_reader.chunks(path, lo, hi):
                        written += write_all(fd, chunk)
            finally:
                os.close(fd)
    finally:
        base_reader.close()
        sft_reader.close()
    return base_reader.bytes_read + sft_reader.bytes_read, written


def main() -> None:
    parser = argparse.ArgumentParser(description="I/O floor for rejuv fuse (no math).")
    parser.add_argument("base", type=Path)
    parser.add_argument("sft", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--chunk-mib",
        type=float,
        default=1.0,
        help="read buffer per side, MiB (1 = rejuv's CPU chunk of 2^19 bf16 elements)",
    )
    args = parser.parse_args()
    t0 = time.perf_counter()
    read, written = copy_floor(args.base, args.sft, args.out, int(args.chunk_mib * 2**20))
    print(f"io_floor: read {read:,} B, wrote {written:,} B in {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
