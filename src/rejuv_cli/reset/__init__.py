"""Everything about the reset: which units a checkpoint has (`layout`), the scorers that rank
them (`drift`, and the data scorers `dormant`, `saturated`, `attribution`; each declared in
`registry.SCORERS`), selection into a mask (`select`), mask files (`masks`), and what a mask
means per tensor (`tensors`). The reset values themselves are pure math in `ops/reset.py`.

Importing this package imports no torch: `registry` is read by `--help` and recipe checks.
"""
