"""Running under torchrun: which rank this process is, work split by bytes, and the few
collectives `rejuv fuse` needs (torch.distributed; gloo on CPU, NCCL on CUDA).

Without torchrun (WORLD_SIZE unset or 1) `current()` is rank 0 of 1 and every collective is
the single-process identity, so callers need no second code path.
"""

from __future__ import annotations

import os
from collections.abc import Hashable
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: writes what exists once (index, config, card, rejuv.json) and reports."""
        return self.rank == 0


_current = Ranks()


def current() -> Ranks:
    return _current


def init_from_env(device_type: str = "cpu") -> Ranks:
    """Join the process group torchrun (or srun with the same variables) describes: RANK,
    WORLD_SIZE, MASTER_ADDR, MASTER_PORT. A no-op when WORLD_SIZE is unset or 1."""
    global _current
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or _current.active:
        return _current
    import torch.distributed as td

    if device_type == "cuda":
        import torch

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not td.is_initialized():
        td.init_process_group("nccl" if device_type == "cuda" else "gloo")
    _current = Ranks(td.get_rank(), td.get_world_size())
    return _current


def split_by_bytes(sizes: dict[Hashable, int], world: int) -> list[list[Hashable]]:
    """Keys dealt to `world` ranks so that each holds about the same bytes: largest first, each
    to the rank with the fewest bytes so far (ties: the lower rank). Every rank computes the
    same split from the same sizes. Each rank's keys keep the order of `sizes`."""
    load = [0] * world
    owner: dict[Hashable, int] = {}
    for key in sorted(sizes, key=lambda k: -sizes[k]):  # stable: equal sizes keep their order
        r = min(range(world), key=lambda i: (load[i], i))
        owner[key] = r
        load[r] += sizes[key]
    return [[k for k in sizes if owner[k] == r] for r in range(world)]


def mine(sizes: dict[Hashable, int]) -> list[Hashable]:
    """This rank's share of `sizes` (all of them in a single process)."""
    r = current()
    return split_by_bytes(sizes, r.world)[r.rank] if r.active else list(sizes)


def share(n: int) -> range:
    """This rank's contiguous block of `n` items (calibration batches, prompts), the first
    n % world ranks holding one more; all of range(n) in a single process. The blocks
    gathered in rank order give back the data order."""
    r = current()
    size, extra = divmod(n, r.world)
    start = r.rank * size + min(r.rank, extra)
    return range(start, start + size + (r.rank < extra))


def share_label(label: str) -> str:
    """A progress bar's label for work split between the ranks: rank 0's bar counts its own
    share, and says so."""
    r = current()
    return f"{label} (rank 0's share of {r.world})" if r.active else label


def all_reduce_(tensors: list, op: str = "sum") -> None:
    """Replace each tensor, in place, by its elementwise sum (op "sum") or maximum ("max")
    over the ranks. Every rank passes tensors of the same shapes in the same order; they are
    packed into one float64 buffer (integer counts stay exact below 2**53), on the current
    GPU under NCCL, on the CPU under gloo. The identity in a single process."""
    if not current().active or not tensors:
        return
    import torch
    import torch.distributed as td

    device = torch.device("cuda", torch.cuda.current_device()) \
        if td.get_backend() == "nccl" else torch.device("cpu")  # fmt: skip
    flat = torch.cat([t.detach().reshape(-1).to(device, torch.float64) for t in tensors])
    reduce_op = {"sum": td.ReduceOp.SUM, "max": td.ReduceOp.MAX}[op]
    _interruptible(td.all_reduce, flat, op=reduce_op)
    at = 0
    for t in tensors:
        t.copy_(flat[at : at + t.numel()].reshape(t.shape).to(t.dtype))
        at += t.numel()


def unwinding() -> bool:
    """Whether an exception is propagating through the caller (it is in a `finally` block on
    the way out). No collective may start then: the other ranks are not at the same point,
    and the rank would wait for them instead of failing."""
    import sys

    return sys.exc_info()[0] is not None


def all_gather(obj) -> list:
    """Every rank's `obj` (picklable), in rank order; [obj] in a single process."""
    if not current().active:
        return [obj]
    import torch.distributed as td

    out: list = [None] * current().world
    _interruptible(td.all_gather_object, out, obj)
    return out


def broadcast(obj):
    """Rank 0's `obj` on every rank."""
    if not current().active:
        return obj
    import torch.distributed as td

    box = [obj]
    _interruptible(td.broadcast_object_list, box, src=0)
    return box[0]


def shutdown() -> None:
    """Leave the process group together: a barrier, then destroy it. A rank that exits while
    another still holds a connection to it can make gloo abort that one (SIGABRT at exit)."""
    global _current
    if not _current.active:
        return
    import torch.distributed as td

    _interruptible(td.barrier)
    td.destroy_process_group()
    _current = Ranks()


def _interruptible(collective, *args, **kwargs) -> None:
    """Run a collective on a helper thread while this one waits in short sleeps.

    A rank waiting inside gloo's C++ code never returns to Python, so it could not act on the
    SIGTERM torchrun sends when another rank fails: it would hang until gloo's 30-minute
    timeout and be killed, leaving its temporary output behind. Waiting here instead, the
    signal unwinds this rank like any interrupt (its partial output removed, exit 130).
    """
    import threading

    failure: list[BaseException] = []

    def run() -> None:
        try:
            collective(*args, **kwargs)
        except BaseException as e:  # handed to the waiting thread
            failure.append(e)

    worker = threading.Thread(target=run, name="rejuv-collective", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.2)
        if _on_wait is not None:
            _on_wait()
    if failure:
        raise failure[0]


_on_wait = None  # called while a collective waits (while_waiting)


@contextmanager
def while_waiting(callback):
    """Inside: `callback()` runs about every 0.2 s while this rank waits in a collective (rank
    0 reads the other ranks' progress while it waits for them to finish); None: nothing."""
    global _on_wait
    previous, _on_wait = _on_wait, callback
    try:
        yield
    finally:
        _on_wait = previous
