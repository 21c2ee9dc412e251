"""Checkpoint I/O: resolve model arguments, read shards lazily, write shards by streaming."""
