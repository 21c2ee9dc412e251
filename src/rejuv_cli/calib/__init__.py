"""Calibration data: built-in sets, the JSONL loader, tokenization with response masks."""
