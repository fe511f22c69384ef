"""Benchmark presets shipped with fimbench (installed as the ``fimbench.configs`` package)."""
