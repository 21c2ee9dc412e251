"""Builders for tests and benchmarks, never used by the CLI: tiny real-format model pairs
(synth), a sample diagnose report (sample_report), the headless-browser check of the HTML
report (browser). tests/ and bench/ both import these and never each other."""
