"""Pure pieces: the fusion op, shard planning, size parsing, safetensors headers."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import bits, reference_fuse
from safetensors.torch import load_file

from rejuv_cli.checkpoint.safetensors_file import read_header
from rejuv_cli.checkpoint.stream import row_chunks
from rejuv_cli.checkpoint.writer import OutEntry, ShardLayout, parse_size, plan_shards
from rejuv_cli.ops.fuse import all_finite, fuse


def test_fuse_matches_reference_and_keeps_signed_zeros():
    gen = torch.Generator().manual_seed(0)
    b = torch.randn(1000, generator=gen).to(torch.bfloat16)
    s = torch.randn(1000, generator=gen).to(torch.bfloat16)
    b[:3] = torch.tensor([-0.0, 0.0, -0.0])
    s[:3] = torch.tensor([0.0, -0.0, -0.0])
    for alpha in (0.1, 0.5, 0.73):
        assert bits(fuse(b, s, alpha, torch.bfloat16)) == bits(reference_fuse(b, s, alpha))
    assert bits(fuse(b, s, 0.0, torch.bfloat16)) == bits(b)  # -0.0 stays -0.0
    assert bits(fuse(b, s, 1.0, torch.bfloat16)) == bits(s)
    # Rounded once: fp32 result then one cast, not bf16 intermediate math.
    out32 = fuse(b, s, 0.3, torch.float32)
    assert torch.equal(fuse(b, s, 0.3, torch.bfloat16), out32.to(torch.bfloat16))


def test_fuse_does_not_modify_float32_inputs():
    b, s = torch.ones(4), torch.full((4,), 3.0)
    fuse(b, s, 0.5, torch.float32)
    assert b.tolist() == [1.0] * 4 and s.tolist() == [3.0] * 4


def test_all_finite():
    assert all_finite(torch.ones(3, dtype=torch.bfloat16))
    assert not all_finite(torch.tensor([1.0, float("inf")]))
    assert not all_finite(torch.tensor([float("nan")], dtype=torch.float16))
    assert all_finite(torch.tensor([1, 2]))


def test_row_chunks_cover_whole_rows_and_split_at_added_rows():
    chunks = list(row_chunks((10, 4), split_row=7, chunk_elements=12))
    assert chunks == [(0, 12, True), (12, 24, True), (24, 28, True), (28, 40, False)]
    assert list(row_chunks((), None, 8)) == [(0, 1, True)]
    assert list(row_chunks((5,), None, 2)) == [(0, 2, True), (2, 4, True), (4, 5, True)]
    assert list(row_chunks((0, 3), None, 8)) == []
    big_rows = list(row_chunks((3, 100), None, 10))  # a row longer than a chunk: one row each
    assert big_rows == [(0, 100, True), (100, 200, True), (200, 300, True)]


@pytest.mark.parametrize(
    "text, value",
    [
        ("5GB", 5 * 10**9),
        ("500MB", 5 * 10**8),
        ("2GiB", 2 * 2**30),
        ("1.5kb", 1500),
        (4096, 4096),
        ("123", 123),
    ],
)
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "-1GB", 0, "0"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_shard_plan_respects_the_limit_including_headers(tmp_path):
    entries = [OutEntry(f"layers.{i}.w", "BF16", (37, 11)) for i in range(40)]
    entries.append(OutEntry("big", "F32", (3000,)))  # larger than the limit: its own shard
    shards = plan_shards(entries, 3000)
    assert [e.name for s in shards for e in s.entries] == [e.name for e in entries]
    for s in shards:
        assert s.file_bytes <= 3000 or s.entries == [entries[-1]]
    assert shards[0].filename == f"model-00001-of-{len(shards):05d}.safetensors"
    assert plan_shards(entries[:2], 10**9)[0].filename == "model.safetensors"


def test_written_header_is_valid_safetensors_and_aligned(tmp_path):
    shard = ShardLayout(
        "x.safetensors",
        [
            OutEntry("a", "BF16", (3,)),
            OutEntry("b", "F32", (2, 2)),
            OutEntry("c", "I64", (1,)),
            OutEntry("d", "BOOL", (5,)),
        ],
    )
    values = {
        "a": torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16),
        "b": torch.eye(2),
        "c": torch.tensor([-7]),
        "d": torch.tensor([True, False, True, True, False]),
    }
    path = tmp_path / "x.safetensors"
    with open(path, "wb") as f:
        f.write(shard.header_bytes())
        for e in shard.ordered():
            f.write(values[e.name].contiguous().view(torch.uint8).numpy())
    assert path.stat().st_size == shard.file_bytes
    loaded = load_file(path)  # the reference implementation accepts it
    assert all(torch.equal(loaded[k], v) for k, v in values.items())
    header, meta = read_header(path)
    assert meta == {"format": "pt"}
    for info in header.values():  # every tensor starts at a multiple of its element size
        assert info.offset % {"BF16": 2, "F32": 4, "I64": 8, "BOOL": 1}[info.dtype] == 0
        assert info.nbytes == math.prod(info.shape) * values[info.name].element_size()
