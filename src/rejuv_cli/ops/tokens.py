"""Next-token distribution statistics under teacher forcing (docs/method.md section 5,
output space).

Pure tensor functions: no models, no I/O. Rows are response positions; columns the vocabulary.
"""

from __future__ import annotations

import torch

CONFIDENT = 0.99  # "over-confident" tokens: p_max above this
BLOCK_ELEMENTS = 1 << 25  # rows × vocabulary per float32 temporary (128 MB)


def block_rows(vocab: int) -> int:
    """Rows of [N, V] logits per block so float32 temporaries stay near BLOCK_ELEMENTS."""
    return max(1, BLOCK_ELEMENTS // max(vocab, 1))


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """logits [N, V] any float dtype -> log-softmax [N, V] float32."""
    return torch.log_softmax(logits.float(), dim=-1)


def entropy(logp: torch.Tensor) -> torch.Tensor:
    """H = −Σ p log p per row, nats. logp: [N, V] float32 -> [N] float32."""
    p = logp.exp()
    # p·log p is 0 where p underflows to 0 (log p = −inf would give NaN).
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)


def token_stats(logp: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-position statistics of one model's next-token distributions.

    logp: [N, V] float32 log-probabilities; targets: [N] long, the tokens actually next.
    Returns [N] float32 tensors: `entropy` H = −Σ p log p (nats), `p_max`, `nll` = −log p(target).
    """
    return {
        "entropy": entropy(logp),
        "p_max": logp.max(-1).values.exp(),
        "nll": -logp.gather(-1, targets[:, None]).squeeze(-1),
    }


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per position, nats. logp, logq: [N, V] float32 -> [N] float32.

    Terms with p = 0 contribute 0; q = 0 where p > 0 gives +inf, as it should.
    """
    p = logp.exp()
    terms = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p))
    return terms.sum(-1)
