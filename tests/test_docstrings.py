"""The public API has Google-style docstrings: every name in the ``__all__`` of :data:`PUBLIC_MODULES` that is a
function, and every public method of a public class, documents each parameter under ``Args:``, has a
``Returns:`` (a generator: ``Yields:``) section unless it returns None, and names ``FimbenchError`` under
``Raises:`` when its own source raises it; a section's entries are indented one level (4 spaces).

ruff's pydocstyle rules (pyproject.toml) check the rest: that the docstrings exist (D100-D104, D419), that no
section is empty (D414), and the parameters of an ``Args:`` section that is there (D417; this test also
catches the ``Args:`` section that is missing).

A class's public methods are those defined in its own body (names without a leading ``_``, classmethods and
staticmethods included, properties not), plus ``__init__`` when it takes parameters; those may be documented
in the class docstring or in ``__init__``'s. Enum members and whatever Enum, str, object, Protocol,
NamedTuple or ``@dataclass`` generate are not the module's own code and are skipped.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

PUBLIC_MODULES = ("fimbench.curvature", "fimbench.fisher", "fimbench.data", "fimbench.methods", "fimbench.optim")

SECTION_NAMES = (
    "Args", "Arguments", "Attributes", "Example", "Examples", "Note", "Notes", "Raises", "References",
    "Returns", "See Also", "Todo", "Warning", "Warnings", "Yields",
)  # fmt: skip
HEADER = re.compile(rf"^(?P<indent> *)(?P<name>{'|'.join(SECTION_NAMES)}):\s*$")
ENTRY = re.compile(r"^(?P<name>\*{0,2}[A-Za-z_]\w*)(?:\s*\([^)]*\))?:(?:\s|$)")
INDENT = 4


@dataclass
class Section:
    """One Google section: the names of its entries (``name:`` / ``name (type):``) and its text."""

    entries: list[str] = field(default_factory=list)
    text: str = ""


@dataclass(frozen=True)
class Public:
    """A callable of the public API: its qualified name, the function, the parameters it does not document
    (``self``/``cls``) and any further docstrings that may document it (the class's, for ``__init__``)."""

    name: str
    function: Callable[..., Any]
    implicit: tuple[str, ...] = ()
    extra_docs: tuple[str, ...] = ()


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def parse_sections(doc: str | None) -> tuple[dict[str, Section], list[str]]:
    """The Google sections of a docstring, and the problems of their layout (entries not one level deeper)."""
    lines = inspect.cleandoc(doc or "").splitlines()
    sections: dict[str, Section] = {}
    problems: list[str] = []
    i = 0
    while i < len(lines):
        header = HEADER.match(lines[i])
        i += 1
        if header is None:
            continue
        indent = len(header["indent"])
        body: list[str] = []
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > indent):
            body.append(lines[i])
            i += 1
        content = [line for line in body if line.strip()]
        section = sections.setdefault(header["name"], Section())
        section.text = "\n".join(filter(None, [section.text, *content]))
        if not content:  # ruff's D414
            continue
        level = min(_indent(line) for line in content)
        if level != indent + INDENT:
            problems.append(f"section {header['name']}: entries are indented {level - indent}, not {INDENT} spaces")
        for line in content:
            if _indent(line) == level and (entry := ENTRY.match(line[level:])):
                section.entries.append(entry["name"].lstrip("*"))
    return sections, problems


def raises_fimbench_error(function: Callable[..., Any]) -> bool:
    """Whether the function's own source (nested functions included, callees not) raises ``FimbenchError``."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            raised = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            name = raised.attr if isinstance(raised, ast.Attribute) else getattr(raised, "id", None)
            if name == "FimbenchError":
                return True
    return False


def docstring_problems(function: Callable[..., Any], implicit: tuple[str, ...] = (), extra_docs: tuple[str, ...] = ()) -> list[str]:
    """What the docstring of ``function`` (together with ``extra_docs``) misses of the rules above."""
    sections: dict[str, Section] = {}
    problems: list[str] = []
    for doc in (function.__doc__ or "", *extra_docs):
        found, layout = parse_sections(doc)
        problems += layout
        for name, section in found.items():
            merged = sections.setdefault(name, Section())
            merged.entries += section.entries
            merged.text = "\n".join(filter(None, [merged.text, section.text]))
    documented = set(sections.get("Args", Section()).entries) | set(sections.get("Arguments", Section()).entries)
    signature = inspect.signature(function)
    for parameter in signature.parameters.values():
        if parameter.name not in implicit and parameter.name not in documented:
            problems.append(f"parameter {parameter.name!r} is not documented under Args:")
    returned = signature.return_annotation
    if returned not in (None, "None", type(None), inspect.Signature.empty):
        wanted = "Yields" if inspect.isgeneratorfunction(inspect.unwrap(function)) else "Returns"
        if not sections.get(wanted, Section()).text and not sections.get("Returns", Section()).text:
            shown = returned if isinstance(returned, str) else getattr(returned, "__name__", repr(returned))
            problems.append(f"no {wanted}: section (it returns {shown})")
    if raises_fimbench_error(function) and "FimbenchError" not in sections.get("Raises", Section()).entries:
        problems.append("raises FimbenchError, but Raises: does not name it")
    return problems


def _own_code(function: Callable[..., Any], owner: type) -> bool:
    """Whether ``function`` is written in ``owner``'s module (not generated by dataclass, Enum, Protocol...)."""
    code = getattr(inspect.unwrap(function), "__code__", None)  # a decorated method: the code it wraps
    module = sys.modules.get(owner.__module__)
    return code is not None and module is not None and code.co_filename == getattr(module, "__file__", None)


def class_members(qualified: str, cls: type) -> Iterator[Public]:
    """The public methods of ``cls`` (module docstring)."""
    for name, attribute in vars(cls).items():
        if name.startswith("_") and name != "__init__":
            continue
        if isinstance(attribute, staticmethod):
            function, implicit = attribute.__func__, ()
        elif isinstance(attribute, classmethod):
            function, implicit = attribute.__func__, tuple(inspect.signature(attribute.__func__).parameters)[:1]
        elif inspect.isfunction(attribute):
            function, implicit = attribute, tuple(inspect.signature(attribute).parameters)[:1]
        else:  # properties, Enum members, class attributes
            continue
        if not _own_code(function, cls):
            continue
        if name == "__init__":
            if len(inspect.signature(function).parameters) <= 1:
                continue
            yield Public(f"{qualified}.{name}", function, implicit, (cls.__doc__ or "",))
        else:
            yield Public(f"{qualified}.{name}", function, implicit)


def public_callables(modules: tuple[str, ...] = PUBLIC_MODULES) -> list[Public]:
    """Every function of the modules' ``__all__`` and every public method of their classes, each once."""
    found: list[Public] = []
    seen: set[int] = set()
    for module_name in modules:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            value = getattr(module, name)
            if id(value) in seen:
                continue
            seen.add(id(value))
            if inspect.isclass(value):
                found += class_members(f"{module_name}.{name}", value)
            elif inspect.isfunction(value):
                found.append(Public(f"{module_name}.{name}", value))
    return found


PUBLIC = public_callables()


@pytest.mark.parametrize("public", PUBLIC, ids=[public.name for public in PUBLIC])
def test_public_docstring_is_google_style(public: Public) -> None:
    problems = docstring_problems(public.function, public.implicit, public.extra_docs)
    assert not problems, f"{public.name}: " + "; ".join(problems)


def test_the_collection_finds_functions_methods_and_constructors_only() -> None:
    names = {public.name for public in PUBLIC}
    assert {
        "fimbench.curvature.approximate",
        "fimbench.curvature.KroneckerSum.solve",
        "fimbench.curvature.KroneckerSum.from_state_dict",  # a classmethod
        "fimbench.curvature.KroneckerInverse.__init__",
        "fimbench.fisher.ExactFisher.__init__",
        "fimbench.fisher.Likelihood.nll",  # an Enum's own method
        "fimbench.data.DownloadProgress.start",  # a Protocol's own method
        "fimbench.data.batch_indices",  # a generator
    } <= names
    assert "fimbench.curvature.KroneckerSum.__init__" not in names  # generated by @dataclass
    assert "fimbench.curvature.KroneckerSum.rank" not in names  # a property
    assert not any(name.startswith("fimbench.fisher.Likelihood.") and name.split(".")[-1].isupper() for name in names)
    assert not any(name.endswith(("__eq__", "__repr__", "__post_init__", "__call__")) for name in names)


def _badly_documented(alpha: int, beta: float, *rest: int, **settings: Any) -> int:  # noqa: D417 (on purpose)
    """Add ``alpha`` to itself.

    Args:
        alpha (int): The first number,
            beta: a continuation line, not an entry.
        *rest: More numbers.
    """
    if alpha < 0:
        from fimbench.errors import FimbenchError

        raise FimbenchError("alpha must not be negative")
    return alpha + alpha


def _well_documented(alpha: int, *rest: int, **settings: Any) -> Iterator[int]:
    """Yield ``alpha``.

    Args:
        alpha: The number.
        *rest: Ignored.
        **settings: Ignored.

    Yields:
        ``alpha``, once.
    """
    yield alpha


def test_the_checker_reports_what_is_missing() -> None:
    assert docstring_problems(_badly_documented) == [
        "parameter 'beta' is not documented under Args:",
        "parameter 'settings' is not documented under Args:",
        "no Returns: section (it returns int)",
        "raises FimbenchError, but Raises: does not name it",
    ]
    assert docstring_problems(_well_documented) == []


def test_the_parser_reads_entries_one_level_deeper_only() -> None:
    sections, problems = parse_sections(
        """Summary.

        Args:
          x: Two spaces deep.

        Raises:
            FimbenchError: When.
            ValueError: Otherwise,
                continued: not an entry.
        """
    )
    assert sections["Args"].entries == ["x"] and problems == ["section Args: entries are indented 2, not 4 spaces"]
    assert sections["Raises"].entries == ["FimbenchError", "ValueError"]
