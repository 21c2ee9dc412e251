"""Plasticity diagnostics: weight space (streaming), output space, unit activity, sharpness."""
