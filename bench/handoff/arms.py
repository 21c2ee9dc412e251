"""The pre-registered design of the evidence run (README, "Does it help?", round two).

Which ladder checkpoints get the rejuvenation arms, and the `rejuv fuse` flags of every arm.
Pure functions: `run.py` runs them and `analysis.py` reads their results.
"""

from __future__ import annotations

import math

ALPHAS = (0.25, 0.5, 0.75)


def noise(p: float, q: float, n: int) -> float:
    """One standard error of the difference of two accuracies p and q over n problems."""
    return math.sqrt((p * (1 - p) + q * (1 - q)) / n)


def choose_checkpoints(val_acc: dict[int, float], n: int) -> dict[str, int]:
    """SFT epochs of the checkpoints the arms start from, from greedy accuracy on the n
    validation problems (never the test problems). A difference counts only beyond one
    standard error (`noise`): the ladder-only probe showed accuracy creeping up by less than
    that for ever (0.875, 0.879, 0.902 at 256, 512, 1024 epochs over 256 problems).

    - "over": the last ladder point (the most over-trained);
    - "improving": the last point whose accuracy is above the previous point's by more than
      the noise; if that is also "early", the one before it (issue #16);
    - "early": early stopping by the one-standard-error rule: the earliest point whose
      accuracy is within the noise of the best point's.
    """
    epochs = sorted(val_acc)
    best = max(epochs, key=lambda e: (val_acc[e], -e))
    early = next(e for e in epochs
                 if val_acc[best] - val_acc[e] <= noise(val_acc[best], val_acc[e], n))  # fmt: skip
    rising = [e for prev, e in zip(epochs, epochs[1:], strict=False)
              if val_acc[e] - val_acc[prev] > noise(val_acc[e], val_acc[prev], n)]  # fmt: skip
    improving = rising[-1] if rising else epochs[0]
    if improving == early and epochs.index(early) > 0:
        improving = epochs[epochs.index(early) - 1]
    return {"over": epochs[-1], "improving": improving, "early": early}


def arm_flags(
    alpha_rec: float | None, calib: str, attribution: bool = True
) -> dict[str, list[str]]:
    """Arm name -> the `rejuv fuse` flags that make it from a checkpoint. `alpha_rec`: the α
    `rejuv sweep` recommends for that checkpoint (None: no surgery, so its arms are the
    checkpoint itself and are not made again). `attribution`: also the recommended α with
    `--select attribution` (the first arm the 60-minute budget drops)."""
    arms: dict[str, list[str]] = {}
    for a in ALPHAS:
        arms[f"fuse-a{a:g}"] = ["--alpha", f"{a:g}", "--reset", "0"]
        arms[f"rejuv-a{a:g}"] = ["--alpha", f"{a:g}"]  # the default 1% drift reset
    if alpha_rec is not None:
        a = f"{alpha_rec:g}"
        arms["sweep-fuse"] = ["--alpha", a, "--reset", "0"]
        arms["sweep-rejuv"] = ["--alpha", a]
        if attribution:
            arms["sweep-attribution"] = ["--alpha", a, "--select", "attribution", "--calib",
                                         calib, "--samples", "128"]  # fmt: skip
    return arms
