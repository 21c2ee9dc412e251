"""Pure tensor functions: no I/O, no config, no logging."""
