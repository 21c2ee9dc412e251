"""Rendering: Rich on stderr, JSON on stdout. Never imports torch."""
