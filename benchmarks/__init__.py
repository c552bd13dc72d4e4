"""The ckpthooks performance suite: ``python -m benchmarks.run --size full|quick`` (``make bench``,
``make bench-quick``). See ``benchmarks/README.md`` and ``docs/performance.md``."""
