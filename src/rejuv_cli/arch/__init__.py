"""Architecture knowledge as data: unit maps keyed by config model_type. No torch, no I/O."""
