"""The input side is an interface: a tensor source that is not a checkpoint directory (here, a
dict of tensors in memory) goes through the streaming layer, the drift scorer, the reset and the
fuse executor, and the weight diagnostics, and gives the same bytes and numbers as the
safetensors checkpoint holding the same tensors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from conftest import load_dir

import rejuv_cli.checkpoint.stream as stream
from rejuv_cli.checkpoint.dtypes import code_of
from rejuv_cli.checkpoint.reader import Checkpoint
from rejuv_cli.checkpoint.safetensors_file import TensorInfo
from rejuv_cli.checkpoint.source import TensorSource
from rejuv_cli.diagnostics.weights import weight_drift
from rejuv_cli.executor import Executor
from rejuv_cli.pairing import pair_tensors
from rejuv_cli.plan import build_plan
from rejuv_cli.recipe import Recipe, ResetSettings
from rejuv_cli.reset.drift import score_drift
from rejuv_cli.reset.layout import unit_layout
from rejuv_cli.reset.norms import stream_norms
from rejuv_cli.reset.select import select_mask
from rejuv_cli.reset.tensors import tensor_resets

CPU = torch.device("cpu")


class MemorySource:
    """A TensorSource over a dict of torch tensors (no files): the smallest possible format."""

    def __init__(self, label: str, tensors: dict[str, torch.Tensor]):
        self.label = label
        self._bytes = {n: t.contiguous().reshape(-1).view(torch.uint8).numpy()
                       for n, t in tensors.items()}  # fmt: skip
        self.tensors = {
            n: TensorInfo(
                n,
                code_of(t.dtype),
                tuple(t.shape),
                Path("<memory>"),
                i,
                t.numel() * t.element_size(),
            )  # fmt: skip
            for i, (n, t) in enumerate(tensors.items())
        }

    def read_into(self, name: str, start: int, stop: int, out) -> None:
        size = self.tensors[name].nbytes // max(self.tensors[name].numel, 1)
        out[:] = self._bytes[name][start * size : stop * size]


def run_all(base_src, sft_src, plan, layout, settings, out: Path):
    """Score, select, reset and fuse from these sources; returns what each step produced."""
    scores = score_drift(layout, base_src, sft_src, CPU)
    mask = select_mask(layout, scores, settings, {})
    touched = {n: {0} for inst in layout.instances for n, _, _ in inst.tensors}
    norms = stream_norms(base_src, None, touched, CPU)
    shapes = {n: t.shape for n, t in sft_src.tensors.items()}
    resets = tensor_resets(layout, mask, settings, shapes, norms)
    out.mkdir()
    stats = Executor(plan, base_src, sft_src, CPU, None, resets, settings).run(out)
    files = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    return scores, mask, files, stats.digests


def test_an_in_memory_source_gives_the_checkpoint_bytes(llama, tmp_path, monkeypatch):
    monkeypatch.setitem(stream.CHUNK_ELEMENTS, "cpu", 1000)  # tensors span many chunks
    base_dir, sft_dir = llama
    settings = ResetSettings(fraction=0.05, mode="shrink-perturb", seed=3)
    recipe = dataclasses.replace(Recipe(), alpha=0.3, shard_size="20KB", reset=settings)
    with Checkpoint.open(base_dir, "BASE") as base, Checkpoint.open(sft_dir, "SFT") as sft:
        mem_base = MemorySource("BASE", load_dir(base_dir))
        mem_sft = MemorySource("SFT", load_dir(sft_dir))
        for src in (base, sft, mem_base, mem_sft):
            assert isinstance(src, TensorSource)
        plan = build_plan(base, sft, recipe)
        layout = unit_layout(sft, plan, None)
        ref = run_all(base, sft, plan, layout, settings, tmp_path / "files")
        got = run_all(mem_base, mem_sft, plan, layout, settings, tmp_path / "memory")
        drift_ref = weight_drift(base, sft, pair_tensors(base, sft), CPU)
        drift_got = weight_drift(mem_base, mem_sft, pair_tensors(base, sft), CPU)
    for a, b in zip(ref[0].scores, got[0].scores, strict=True):
        assert np.array_equal(a, b)
    assert ref[1].count > 0 and all(
        np.array_equal(ref[1].selected[k], got[1].selected[k]) for k in ref[1].selected
    )
    assert ref[2].keys() == got[2].keys() and len(ref[2]) > 1
    for name in ref[2]:
        assert ref[2][name] == got[2][name], name
    assert ref[3] == got[3]  # input digests: the same bytes were read
    assert drift_ref == drift_got


def test_paired_chunks_cover_each_tensor_once_in_order(llama, monkeypatch):
    """The one streaming loop: every element of every pair, in row order; `shared_only` skips
    the rows BASE does not have, and a pair without a BASE name reads only SFT."""
    monkeypatch.setitem(stream.CHUNK_ELEMENTS, "cpu", 100)
    ones = {"a": torch.arange(30, dtype=torch.float32).view(10, 3), "b": torch.ones(7)}
    base = MemorySource("BASE", {"a": ones["a"][:8].clone(), "b": ones["b"]})
    sft = MemorySource("SFT", ones)
    pairs = [stream.TensorPair((10, 3), "a", "a", base_rows=8), stream.TensorPair((7,), "b", None)]
    s = stream.PairedStream(base, sft, CPU)
    seen = [(c.pair.sft, c.start, c.stop, c.shared, c.base is not None) for c in s.chunks(pairs)]
    assert seen == [("a", 0, 24, True, True), ("a", 24, 30, False, False), ("b", 0, 7, True, False)]
    shared = [(c.pair.sft, c.start, c.stop) for c in s.chunks(pairs, shared_only=True)]
    assert shared == [("a", 0, 24), ("b", 0, 7)]
    chunk = next(iter(s.chunks(pairs[:1])))
    assert torch.equal(chunk.sft.view(8, 3), ones["a"][:8]) and torch.equal(chunk.base, chunk.sft)
