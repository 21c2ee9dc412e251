"""rejuv: checkpoint surgery between SFT and RL (base-anchored fusion + targeted neuron reset)."""

__version__ = "0.1.0"
