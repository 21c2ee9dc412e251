"""Token ids a model does not have: how BASE reads the tokens an SFT run added.

An SFT run that adds tokens (ChatML's <|im_start|> / <|im_end|>, tool-call markers) appends
rows to the embedding, and the calibration text, rendered with SFT's chat template, then holds
ids that BASE's embedding lacks (an IndexError in its first layer). Every model must see only
ids it has, at the same positions as the others (KL compares the models position by position),
so a model reads an id beyond its embedding as the mean of its own input embeddings: what
transformers' `resize_token_embeddings` gives an added token (`mean_resizing`, its default),
i.e. BASE as the SFT run that added the tokens started from it. Output distributions are
compared on the shared vocabulary (`shared_vocab`, `response_logits`); positions whose target
is an added token are skipped there.
"""

from __future__ import annotations

import torch

CHUNK = 4096  # ids per embedding call when averaging the rows


class UnseenTokens:
    """Forward hooks on a model's input embedding that replace ids beyond its rows by the mean
    embedding. `count` is how many tokens were replaced, `ids` which ids they were."""

    def __init__(self, embedding: torch.nn.Module):
        self.rows = int(embedding.weight.shape[0])
        self.count = 0
        self.ids: set[int] = set()
        self._mask: torch.Tensor | None = None
        self._mean: torch.Tensor | None = None  # [D] the module's output for the mean row
        self._version = None  # the weight's version the mean was computed from
        self._busy = False
        self.handles = [
            embedding.register_forward_pre_hook(self._pre, with_kwargs=True),
            embedding.register_forward_hook(self._post),
        ]

    def _pre(self, module, args, kwargs):
        ids = args[0] if args else kwargs.get("input")
        self._mask = None
        if self._busy or ids is None or ids.numel() == 0 or int(ids.max()) < self.rows:
            return None
        mask = ids >= self.rows
        self.count += int(mask.sum())
        self.ids.update(int(i) for i in ids[mask].unique().tolist())
        self._mask = mask
        safe = ids.masked_fill(mask, 0)  # any id the model has; its rows are overwritten below
        return ((safe, *args[1:]), kwargs) if args else (args, {**kwargs, "input": safe})

    def _post(self, module, _args, output):
        mask, self._mask = self._mask, None
        if mask is None:
            return None
        mean = self.mean(module).to(device=output.device, dtype=output.dtype)
        return torch.where(mask.to(output.device).unsqueeze(-1), mean, output)

    def mean(self, module) -> torch.Tensor:
        """[D] float32: the mean of the module's outputs over all its ids. For an embedding
        that scales its rows (Gemma) this is the scaled mean row, so it equals what the model
        would compute for a row set to the mean. Recomputed when the weights change (sharpness
        perturbs them in place)."""
        weight = module.weight
        version = None if weight.device.type == "meta" else weight._version
        if self._mean is not None and (version is None or version == self._version):
            return self._mean
        device = weight.device if weight.device.type != "meta" else torch.device("cpu")
        total = None
        self._busy = True
        try:
            with torch.no_grad():
                for start in range(0, self.rows, CHUNK):
                    ids = torch.arange(start, min(start + CHUNK, self.rows), device=device)
                    part = module(ids).float().sum(0)
                    total = part if total is None else total + part.to(total.device)
        finally:
            self._busy = False
        self._mean, self._version = total / self.rows, version
        return self._mean

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def read_unseen_tokens_as_mean(model) -> UnseenTokens:
    """Install `UnseenTokens` on `model`'s input embedding (kept as `model._rejuv_unseen`)."""
    hooks = UnseenTokens(model.get_input_embeddings())
    model._rejuv_unseen = hooks
    return hooks


def unseen_note(label: str, model) -> str | None:
    """A warning line when `model` read ids beyond its embedding, else None."""
    hooks = getattr(model, "_rejuv_unseen", None)
    if hooks is None or not hooks.count:
        return None
    ids = sorted(hooks.ids)
    shown = ", ".join(map(str, ids[:8])) + (", ..." if len(ids) > 8 else "")
    return (
        f"{label} has {hooks.rows} embedding rows; {hooks.count} input position(s) held ids "
        f"beyond them (tokens added by SFT: {shown}), which {label} read as the mean of its "
        "input embeddings, as transformers' resize_token_embeddings initialises an added token"
    )
