"""Sharded training checkpoints made by the real producers: torch FSDP1/FSDP2 and
torch.distributed.checkpoint, in 2+ processes with the gloo backend on CPU.

The calls replay what verl's FSDPCheckpointManager does (verl/utils/checkpoint/
fsdp_checkpoint_manager.py: `torch.save(model.state_dict(), model_world_size_{W}_rank_{R}.pt)`
under SHARDED_STATE_DICT, optim_/extra_state_ files, fsdp_config.json and huggingface/ from
rank 0) with its wrapping (verl/utils/fsdp_utils.py apply_fsdp2: fully_shard per decoder layer
and untied embedding, then the root; FSDP1 with a device mesh, so shards are DTensors), and
what accelerate and torchtitan hand to `dcp.save` (a {"model": sd, ...} nesting, or top-level
model keys). verl itself is not used: it needs ray, hydra and a GPU stack.

Each run also writes the oracles: the consolidated full state dict (FSDP2
`get_model_state_dict(full_state_dict=True)` / FSDP1 FULL_STATE_DICT, saved by rank 0) and the
trained model saved by `save_pretrained` (fp32) with a tokenizer: the reference names.
"""

from __future__ import annotations

import functools
import io
import json
from dataclasses import dataclass
from pathlib import Path

# verl's huggingface/config.json is the original model's (AutoConfig of the model path), so it
# declares the release dtype while the shards hold fp32 master weights.
CONFIG_DTYPE = "bfloat16"


@dataclass(frozen=True)
class Shape:
    """The tiny Llama: `vocab` 127 and `head_dim` 4 with one KV head give uneven shards and, at
    world size 3, an empty one (k_proj has 4 rows: torch.chunk gives 2, 2, 0)."""

    vocab: int = 128
    kv_heads: int = 2
    head_dim: int | None = None

    def config(self):
        from transformers import LlamaConfig

        extra = {} if self.head_dim is None else {"head_dim": self.head_dim}
        return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=self.kv_heads,
                           vocab_size=self.vocab, max_position_embeddings=64,
                           tie_word_embeddings=False, pad_token_id=0, bos_token_id=1,
                           eos_token_id=2, **extra)  # fmt: skip


# kind -> (FSDP version, HSDP): what one run writes, each under out/<kind>/
KINDS = {"fsdp2": (2, False), "fsdp1": (1, False), "hsdp2": (2, True), "hsdp1": (1, True),
         "dcp": (2, False)}  # fmt: skip


def produce(out: Path, kinds: list[str], world: int = 2, shape: Shape = Shape(),
            replicas: int = 1, seed: int = 0) -> dict[str, Path]:  # fmt: skip
    """Run `world` gloo processes that write each of `kinds` under out/<kind>/:
      fsdp*/hsdp*  ckpt/ (verl's layout), full.pt (consolidated), reference/ (save_pretrained)
      dcp          flat/ (top-level get_model_state_dict keys), nested/ ({"model": sd,
                   "optimizer": ..., "train_state": {"blob": BytesIO}}), columns/ (matrices
                   as Shard(1)), full.pt, reference/
    HSDP kinds use a ("ddp", "fsdp") mesh of (replicas, world // replicas). Returns kind -> dir.
    """
    import torch.multiprocessing as mp

    out.mkdir(parents=True, exist_ok=True)
    store = out / "store"  # a file store: no port to pick, so parallel runs cannot collide
    store.unlink(missing_ok=True)
    job = dict(out=str(out), kinds=kinds, world=world, shape=shape, replicas=replicas,
               seed=seed, store=str(store))  # fmt: skip
    mp.start_processes(_worker, args=(job,), nprocs=world, join=True, start_method="spawn")
    return {k: out / k for k in kinds}


def shard_checkpoint(hf_dir: Path, out: Path, world: int = 2) -> dict[str, Path]:
    """An existing Hugging Face checkpoint as FSDP2 trainers save it, weights unchanged (no
    training step), in its own dtype: out/verl (verl's rank files, fsdp_config.json, and
    huggingface/ with hf_dir's config and tokenizer files) and out/dcp (`dcp.save` of
    `get_model_state_dict`, top-level keys). Returns {"verl": ..., "dcp": ...}."""
    import torch.multiprocessing as mp

    out.mkdir(parents=True, exist_ok=True)
    store = out / "store"
    store.unlink(missing_ok=True)
    job = dict(hf_dir=str(hf_dir), out=str(out), world=world, store=str(store))
    mp.start_processes(_shard_worker, args=(job,), nprocs=world, join=True, start_method="spawn")
    store.unlink(missing_ok=True)
    return {"verl": out / "verl", "dcp": out / "dcp"}


def _shard_worker(rank: int, job: dict) -> None:
    import shutil

    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from transformers import AutoModelForCausalLM

    world, hf_dir, out = job["world"], Path(job["hf_dir"]), Path(job["out"])
    dist.init_process_group("gloo", init_method=f"file://{job['store']}", rank=rank,
                            world_size=world)  # fmt: skip
    try:
        mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("fsdp",))
        model = _wrap_fsdp2(AutoModelForCausalLM.from_pretrained(hf_dir, dtype="auto"), mesh)
        verl = out / "verl"
        verl.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), verl / f"model_world_size_{world}_rank_{rank}.pt")
        dcp.save(get_model_state_dict(model), checkpoint_id=str(out / "dcp"))
        if rank == 0:
            meta = verl / "huggingface"
            meta.mkdir(exist_ok=True)
            for f in hf_dir.iterdir():
                if f.is_file() and not f.name.endswith((".safetensors", ".index.json")):
                    shutil.copy(f, meta / f.name)
            text = json.dumps({"FSDP_version": 2, "world_size": world}, indent=4)
            (verl / "fsdp_config.json").write_text(text)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _worker(rank: int, job: dict) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{job['store']}", rank=rank,
                            world_size=job["world"])  # fmt: skip
    try:
        for kind in job["kinds"]:
            _run_kind(rank, job, kind, Path(job["out"]) / kind)
            dist.barrier()
    finally:
        dist.destroy_process_group()


def _run_kind(rank: int, job: dict, kind: str, out: Path) -> None:
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from transformers import LlamaForCausalLM

    version, hsdp = KINDS[kind]
    world, shape = job["world"], job["shape"]
    if hsdp:
        dims = (job["replicas"], world // job["replicas"])
        mesh = init_device_mesh("cpu", dims, mesh_dim_names=("ddp", "fsdp"))
    else:
        mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("fsdp",))
    torch.manual_seed(job["seed"])  # the same initial weights on every rank
    config = shape.config()
    model = LlamaForCausalLM(config).float()
    model = _wrap_fsdp2(model, mesh) if version == 2 else _wrap_fsdp1(model, mesh, hsdp)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _train_step(model, optim, config.vocab_size, job["seed"])
    if kind == "dcp":
        _save_dcp(model, optim, out)
        full = _full_state_dict(model)
    else:
        sharded = _save_verl(model, optim, out / "ckpt", rank, world, version, config)
        full = _full_state_dict(model) if version == 2 else _gathered(sharded)
    if rank == 0:
        torch.save(full, out / "full.pt")
        _save_reference(full, config, out / "reference")


def _wrap_fsdp2(model, mesh):
    """verl's apply_fsdp2: each decoder layer and untied embedding, then the root."""
    from torch import nn
    from torch.distributed.fsdp import fully_shard

    names = set(model._no_split_modules)
    for name, module in list(model.named_modules()):
        leaf = name.rsplit(".", 1)[-1]
        if type(module).__name__ in names or isinstance(module, nn.Embedding) or leaf == "lm_head":
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _wrap_fsdp1(model, mesh, hsdp: bool):
    """verl's FSDP1: a device mesh (so sharded state dicts are DTensors), transformer-layer
    auto wrap, FULL_SHARD (HYBRID_SHARD on a 2-D mesh), use_orig_params=False."""
    import torch
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardingStrategy
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    policy = functools.partial(transformer_auto_wrap_policy,
                               transformer_layer_cls={LlamaDecoderLayer})  # fmt: skip
    strategy = ShardingStrategy.HYBRID_SHARD if hsdp else ShardingStrategy.FULL_SHARD
    return FSDP(model, device_mesh=mesh, sharding_strategy=strategy, auto_wrap_policy=policy,
                use_orig_params=False, device_id=torch.device("cpu"))  # fmt: skip


def _train_step(model, optim, vocab: int, seed: int) -> None:
    """One AdamW step on seeded tokens: the weights become a trained model's, and the optimizer
    has state to save."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, vocab, (2, 16), generator=gen)
    model(input_ids=ids, labels=ids).loss.backward()
    optim.step()
    optim.zero_grad()


def _full_state_dict(model) -> dict:
    """The consolidated model as CPU tensors (FSDP1 and FSDP2 alike)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts)


def _gathered(sharded: dict) -> dict:
    """FSDP1's consolidated state by DTensor's own all-gather (`full_tensor`). FSDP1's
    FULL_STATE_DICT fails on CPU in torch 2.13 (unshard: "setStorage ... out of bounds for
    storage of size 0"), with or without a training step."""
    return {k: v.full_tensor().clone() for k, v in sharded.items()}


def _save_verl(model, optim, ckpt: Path, rank: int, world: int, version: int, config) -> dict:
    """FSDPCheckpointManager.save_checkpoint: model/optim/extra_state per rank, then (rank 0)
    huggingface/ (config + tokenizer) and fsdp_config.json. Returns the sharded state dict."""
    import torch

    ckpt.mkdir(parents=True, exist_ok=True)
    if version == 1:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp import ShardedStateDictConfig, StateDictType

        with FSDP.state_dict_type(model, StateDictType.SHARDED_STATE_DICT,
                                  ShardedStateDictConfig(offload_to_cpu=False)):  # fmt: skip
            state = model.state_dict()
    else:
        state = model.state_dict()  # FSDP2: get_fsdp_state_ctx is a nullcontext
    torch.save(state, ckpt / f"model_world_size_{world}_rank_{rank}.pt")
    torch.save(optim.state_dict(), ckpt / f"optim_world_size_{world}_rank_{rank}.pt")
    extra = {"lr_scheduler": None, "rng": {"cpu": torch.get_rng_state()}}
    torch.save(extra, ckpt / f"extra_state_world_size_{world}_rank_{rank}.pt")
    if rank == 0:
        _save_hf_meta(config, ckpt / "huggingface")
        text = json.dumps({"FSDP_version": version, "world_size": world}, indent=4)
        (ckpt / "fsdp_config.json").write_text(text)
    return state


def _save_dcp(model, optim, out: Path) -> None:
    """Three DCP directories from the sharded model: top-level model keys (torchtitan today,
    `dcp.save(get_model_state_dict(model))`); accelerate's {"model": sd} nesting with an
    optimizer and a non-tensor train_state next to it; and the matrices split by columns
    (Shard(1), as tensor parallelism places them; vectors replicated), for chunks that are
    not whole rows."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )
    from torch.distributed.tensor import Replicate, Shard

    sd = get_model_state_dict(model)
    dcp.save(sd, checkpoint_id=str(out / "flat"))
    nested = {"model": sd, "optimizer": get_optimizer_state_dict(model, optim),
              "train_state": {"step": 1, "blob": io.BytesIO(b"trainer state bytes")}}  # fmt: skip
    dcp.save(nested, checkpoint_id=str(out / "nested"))
    cols = {k: v.redistribute(v.device_mesh, [Shard(1) if v.dim() == 2 else Replicate()])
            for k, v in sd.items()}  # fmt: skip
    dcp.save(cols, checkpoint_id=str(out / "columns"))


def _save_hf_meta(config, path: Path) -> None:
    import copy

    from rejuv_cli.testing.synth import tiny_tokenizer

    cfg = copy.deepcopy(config)
    cfg.dtype = CONFIG_DTYPE
    cfg.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)


def _save_reference(full: dict, config, path: Path) -> None:
    """The trained model as save_pretrained writes it (fp32): the names rejuv must present."""
    import torch
    from transformers import LlamaForCausalLM

    from rejuv_cli.testing.synth import tiny_tokenizer

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(full, assign=True)
    model.float().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)


# ---- reading through a source, as checkpoint/stream.py does ---------------------------------
def read_range(src, name: str, start: int, stop: int):
    """Elements [start, stop) of `name` through `src.read_into`, as a flat tensor."""
    import numpy as np
    import torch

    from rejuv_cli.checkpoint.dtypes import ITEMSIZE, torch_dtype

    info = src.tensors[name]
    out = np.full((stop - start) * ITEMSIZE[info.dtype], 0xA5, dtype=np.uint8)
    src.read_into(name, start, stop, out)
    return torch.from_numpy(out).view(torch_dtype(info.dtype))


def read_rows(src, name: str, rows_per_chunk: int):
    """The whole tensor, read in chunks of `rows_per_chunk` whole rows."""
    import math

    import torch

    info = src.tensors[name]
    width = math.prod(info.shape[1:]) if len(info.shape) > 1 else 1
    n_rows = info.shape[0] if info.shape else 1
    parts = [read_range(src, name, r * width, min(r + rows_per_chunk, n_rows) * width)
             for r in range(0, n_rows, rows_per_chunk)]  # fmt: skip
    return torch.cat(parts).reshape(info.shape)
