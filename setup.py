"""The package list, found rather than written down: every package under ``fimbench/`` plus
``fimbench.configs``, which ships from ``configs/`` (``package-dir`` in pyproject.toml). Everything else
about the build is in pyproject.toml."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["fimbench", "fimbench.*"]), "fimbench.configs"])
