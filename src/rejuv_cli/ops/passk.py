"""pass@k and the RL-readiness of a model on verifiable prompts. Pure arithmetic; no torch.

For each prompt a model answers k sampled times, c of them correct. Besides accuracy, the
spread of c over prompts says how much a group-based RL method can learn from them:

GRPO (Shao et al. 2024) scores each of a prompt's k samples by its advantage
A_i = (r_i − mean(r)) / std(r) over the group. With a 0/1 reward, a prompt whose samples are
all wrong (c = 0) or all right (c = k) has r_i = mean(r) for every sample, so every advantage
is zero and the prompt contributes no gradient: it is spent compute. Only prompts with
0 < c < k carry a learning signal, so `learnable_share` is the share of an RL batch of these
prompts that would. (DAPO's dynamic sampling drops the other prompts for this reason.) A
model that is all wrong on most prompts has nothing to reinforce; one that is all right on
most has nothing left to learn there.
"""

from __future__ import annotations

from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, "Evaluating
    Large Language Models Trained on Code", eq. 1): 1 − C(n−c, k) / C(n, k), the chance that k
    of the n samples drawn without replacement hold at least one correct one.

    Computed as 1 − Π_{i=n−c+1..n} (1 − k/i), the product form of the binomial ratio, which
    neither overflows nor loses precision for large n. Requires 0 <= c <= n and 1 <= k <= n.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def group_summary(successes: Sequence[int], k: int) -> dict:
    """Readiness of a model from per-prompt success counts, each out of `k` samples.

    Returns {"prompts": P, "k": k, "pass_at_1": mean of c/k, "pass_at_k": share of prompts with
    c >= 1 (the unbiased estimator at n = k), "learnable_share": share with 0 < c < k (nonzero
    GRPO advantage, see the module docstring), "all_wrong_share": share with c = 0,
    "all_right_share": share with c = k}; the shares are None when there are no prompts.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1 (got {k})")
    bad = [c for c in successes if not 0 <= c <= k]
    if bad:
        raise ValueError(f"success counts must lie in 0..{k} (got {bad[:5]})")
    prompts = len(successes)
    if not prompts:
        keys = ("pass_at_1", "pass_at_k", "learnable_share", "all_wrong_share", "all_right_share")
        return {"prompts": 0, "k": k, **dict.fromkeys(keys)}
    return {
        "prompts": prompts,
        "k": k,
        "pass_at_1": sum(c / k for c in successes) / prompts,
        "pass_at_k": sum(pass_at_k(k, c, k) for c in successes) / prompts,
        "learnable_share": sum(0 < c < k for c in successes) / prompts,
        "all_wrong_share": sum(c == 0 for c in successes) / prompts,
        "all_right_share": sum(c == k for c in successes) / prompts,
    }
