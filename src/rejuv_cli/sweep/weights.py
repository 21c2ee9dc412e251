"""A sweep's candidate weights, put into a model in memory.

The values come from the fuse executor (`Executor.outputs`), the same chunks `rejuv fuse`
writes, so the model holds exactly the weights a fuse at that α would write, cast to the
model's compute dtype as `from_pretrained` would cast the written file.
"""

from __future__ import annotations

import torch

from rejuv_cli.executor import Executor
from rejuv_cli.plan import FusePlan


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
    each tensor's dtype (round to nearest, as loading the written checkpoint would)."""
    with torch.no_grad():
        for target, start, stop, values in executor.outputs():
            flat = params[target.name].detach().view(-1)  # shares storage and version counter
            flat[start:stop].copy_(values)
