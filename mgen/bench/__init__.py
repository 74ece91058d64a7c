"""Benchmarks: speed and quality measured on this machine (``mgen bench NAME``).

One module per benchmark (``sample``, ``fid``, ``recap``, ``enat``, ``joint``); every one returns a result
record and writes it through :func:`mgen.bench.report.write_report` (JSON + a markdown table). Benchmarks are
not tests: performance claims live here, never in timed unit tests (docs/ARCHITECTURE.md, "Benchmarks").
"""
