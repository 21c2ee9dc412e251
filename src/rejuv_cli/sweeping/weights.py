"""A sweep's candidate weights, put into a model in memory (or, where that is not possible, loaded
from a temporary checkpoint: `WorkingModel`).

The values come from the fuse executor (`Executor.outputs`), the same chunks `rejuv fuse`
writes, so the model holds exactly the weights a fuse at that α would write, cast to the
model's compute dtype as `from_pretrained` would cast the written file.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from rejuv_cli.executor import Executor
from rejuv_cli.plan import FusePlan
from rejuv_cli.sweeping.job import SweepJob, fuse_job


def parameter_map(model, plan: FusePlan) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """Checkpoint tensor name -> the model's tensor (parameter or buffer) holding it, or
    (None, why) when the values cannot be copied in place: a name the model does not have
    (transformers renames or converts some families' tensors on load, e.g. fused experts), a
    different shape, or weights accelerate offloaded (they live outside the module).
    """
    state = model.state_dict(keep_vars=True)
    found: dict[str, torch.Tensor] = {}
    for tp in plan.tensors:
        tensor = state.get(tp.name)
        if tensor is None:
            return None, f"the loaded model has no tensor named '{tp.name}'"
        if tuple(tensor.shape) != tuple(tp.sft.shape):
            return None, (f"the loaded model's '{tp.name}' has shape {tuple(tensor.shape)}, "
                          f"the checkpoint's {tuple(tp.sft.shape)}")  # fmt: skip
        if tensor.device.type == "meta" or not tensor.is_contiguous():
            return None, f"'{tp.name}' is offloaded (not in the model's memory)"
        found[tp.name] = tensor
    return found, None


def load_into(params: dict[str, torch.Tensor], executor: Executor) -> None:
    """Copy every output chunk of `executor` into `params` (from `parameter_map`), casting to
    each tensor's dtype (round to nearest, as loading the written checkpoint would); weights
    written as FP8 (--dtype fp8) as a loader dequantizes them, codes × block scales."""
    with torch.no_grad():
        for target, start, stop, values in executor.outputs(dequantized=True):
            flat = params[target.name].detach().view(-1)  # shares storage and version counter
            flat[start:stop].copy_(values)


class WorkingModel:
    """The model whose weights become each α's candidate: the loaded SFT model, overwritten in
    place, or (see the module docstring) a fresh load of a temporary checkpoint per α."""

    def __init__(self, job: SweepJob, p, chosen, device, sft_model, warnings):
        from rejuv_cli.calib.models import offloaded_share

        self.job, self.p, self.chosen, self.device, self.warnings = job, p, chosen, device, warnings
        self.model = sft_model
        self.params, why = (None, "weights are offloaded (--max-memory)") \
            if offloaded_share(sft_model) > 0 else parameter_map(sft_model, p.plan)  # fmt: skip
        self.in_memory = self.params is not None
        self._tmp = None
        if not self.in_memory:
            warnings.append(f"each α is written to a temporary checkpoint and loaded from there "
                            f"(slower; the same weights): {why}")  # fmt: skip

    def at(self, alpha: float, on_bytes):
        """The model holding the candidate at `alpha`."""
        from rejuv_cli.executor import Executor
        from rejuv_cli.plan import build_plan

        recipe = self.job.recipe.with_overrides(alpha=alpha)
        if self.in_memory:
            plan = build_plan(self.p.base, self.p.sft, recipe, alpha_flag=True)
            resets = self.chosen.resets if self.chosen else None
            executor = Executor(plan, self.p.base, self.p.sft, self.device, on_bytes, resets,
                                recipe.reset)  # fmt: skip
            load_into(self.params, executor)
            return self.model
        return self._load_written(alpha, on_bytes)

    def _load_written(self, alpha: float, on_bytes):
        from rejuv_cli.calib.models import load_model
        from rejuv_cli.pipeline import prepare_fuse, run_fuse

        self.model = None  # the previous candidate is freed before the next loads
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="rejuv-sweep-")
        out = Path(self._tmp.name) / f"alpha-{alpha:g}"
        prepared = prepare_fuse(fuse_job(self.job, alpha, out))
        try:
            run_fuse(prepared, on_bytes=on_bytes, chosen=self.chosen, say=lambda line: None)
        finally:
            prepared.close()
        notes: list[str] = []
        self.model = load_model(out, f"α={alpha:g}", self.device, self.job.max_memory, notes)
        return self.model

    def close(self) -> None:
        self.model = None
        if self._tmp is not None:
            self._tmp.cleanup()
