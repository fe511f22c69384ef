"""Parsers of the list-valued options (``--methods``, ``--layer``, ``--widths`` / ``--batches``, ``--seeds``): one rule each, shared by the commands.

They import the engines' types lazily, so that ``--help`` does not load torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from fimbench.cli.common import split_list
from fimbench.errors import FimbenchError
from fimbench.names import KRONECKER_METHODS

if TYPE_CHECKING:
    from fimbench.methods import Method


def parse_methods(
    names: list[str], *, empty: str, repeats: bool = False, allow_all: bool = False, choices: Sequence[str] = KRONECKER_METHODS
) -> list[Method]:
    """Methods among ``choices`` (default: the Kronecker ones) by name, in the given order: ``all`` (with
    ``allow_all``) is every one of them.

    A name given twice is an error, or is dropped with ``repeats``; no name at all raises ``empty``.
    """
    from fimbench.methods import Method, parse_method

    allowed = [Method(name) for name in choices]
    if allow_all and [name.strip() for name in names] == ["all"]:
        return allowed
    methods: list[Method] = []
    for name in names:
        method = parse_method(name, choices=allowed)
        if method in methods and not repeats:
            raise FimbenchError(f"--methods lists a method twice: {', '.join(names)}")
        if method not in methods:
            methods.append(method)
    if not methods:
        raise FimbenchError(empty)
    return methods


def parse_layers(text: str) -> tuple[int, ...] | None:
    """``"5"`` -> (5,), ``"1,5,9"`` -> (1, 5, 9), ``"all"`` -> None; 1-based Linear layer numbers."""
    if text.strip().lower() == "all":
        return None
    try:
        layers = tuple(int(item) for item in text.split(","))
    except ValueError:
        raise FimbenchError(f"--layer must be 'all' or Linear layer numbers such as 5 or 1,5,9 (1-based); got '{text}'") from None
    if len(set(layers)) != len(layers):
        raise FimbenchError(f"--layer lists a layer twice: '{text}'")
    return layers


def parse_sizes(text: str, option: str) -> list[int]:
    """``"128,256"`` -> ``[128, 256]``; every entry must be a positive integer."""
    sizes: list[int] = []
    for item in split_list(text):
        try:
            value = int(item)
        except ValueError:
            value = 0
        if value < 1:
            raise FimbenchError(f"{option} takes positive integers, got '{item}'")
        sizes.append(value)
    if not sizes:
        raise FimbenchError(f"{option} needs at least one positive integer")
    return sizes


def parse_seeds(text: str) -> list[int]:
    """``--seeds``: ``"3"`` -> ``[0, 1, 2]`` (that many seeds from 0), ``"0,4,7"`` -> ``[0, 4, 7]``."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    try:
        numbers = [int(item) for item in items]
    except ValueError:
        numbers = []
    if not numbers or any(number < 0 for number in numbers) or (len(numbers) == 1 and numbers[0] < 1):
        raise FimbenchError(f"--seeds takes a count such as 3 (seeds 0, 1, 2) or a list such as 0,1,2; got '{text}'")
    if len(numbers) == 1:
        return list(range(numbers[0]))
    if len(set(numbers)) != len(numbers):
        raise FimbenchError(f"--seeds lists a seed twice: '{text}'")
    return numbers
