"""The documentation: README.md is a short page that runs CI's test command, docs/commands.md documents every
option of every command (in that command's section), and every Markdown link of README.md and docs/*.md is
relative and resolves — to a file of the repository and, with a ``#fragment``, to a heading of that page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from fimbench.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
COMMANDS = ROOT / "docs" / "commands.md"
CI = ROOT / ".ci" / "run"
README_MAX_LINES = 200
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
AUTOLINK = re.compile(r"<(?:https?|ftp|mailto):[^>]+>")
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)


def _walk(command: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _walk(sub, (*path, name))


def _options() -> list[tuple[str, str]]:
    """(command path, long option name) for every option of every command of ``fimbench``, ``--no-…`` and
    ``--true-fisher`` style secondary names included; ``fimbench`` itself is the path ``""``."""
    return [
        (" ".join(path), name)
        for path, command in _walk(typer.main.get_command(app), ())
        for param in command.params
        if param.param_type_name == "option"
        for name in (*param.opts, *param.secondary_opts)
        if name.startswith("--")
    ]


def _section(text: str, command: str) -> str:
    """The part of docs/commands.md from the heading ``## `fimbench <command>` …`` to the next ``## ``."""
    title = f"`fimbench {command}`" if command else "`fimbench`"
    match = re.search(rf"^## {re.escape(title)}(?: [^\n]*)?$(.*?)(?=^## |\Z)", text, re.M | re.S)
    return match.group(1) if match else ""


def test_the_cli_has_options_to_document() -> None:
    names = {name for _, name in _options()}
    assert {"--kl-clip", "--no-nesterov", "--true-fisher", "--dry-run", "--version"} <= names


def test_every_option_of_every_command_is_documented() -> None:
    assert COMMANDS.is_file(), "docs/commands.md is missing"
    text = FENCE.sub("", COMMANDS.read_text(encoding="utf-8"))
    missing = [
        f"fimbench {command} {name}".replace("  ", " ")
        for command, name in _options()
        if not re.search(rf"`{re.escape(name)}`", _section(text, command))
    ]
    assert not missing, "not in its command's section of docs/commands.md (as `--name`): " + ", ".join(missing)


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; the reference belongs in docs/"


def test_readme_runs_the_test_command_of_ci() -> None:
    """The quick start's test command is the one .ci/run runs, word for word."""
    commands = [line.strip() for line in CI.read_text(encoding="utf-8").splitlines() if " -m pytest" in line]
    assert len(commands) == 1, commands
    assert commands[0] in {line.strip() for line in README.read_text(encoding="utf-8").splitlines()}


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (code spans keep their text), spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    anchors: set[str] = set()
    for line in FENCE.sub("", page.read_text(encoding="utf-8")).splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug, n = _slug(heading.group(1)), 1
            while slug in anchors:  # repeated headings: -1, -2, …
                slug, n = f"{_slug(heading.group(1))}-{n}", n + 1
            anchors.add(slug)
    return anchors


def _links(page: Path) -> list[str]:
    text = INLINE_CODE.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    return [*LINK.findall(text), *AUTOLINK.findall(text)]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_links_are_relative_and_resolve(page: Path) -> None:
    broken = []
    for target in _links(page):
        if SCHEME.match(target.lstrip("<")):
            broken.append(f"{target} (not a document of this repository)")
            continue
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if ROOT not in resolved.parents and resolved != ROOT or not resolved.exists():
            broken.append(f"{target} (no such file in the repository)")
        elif fragment and resolved.suffix == ".md" and fragment not in _anchors(resolved):
            broken.append(f"{target} (no heading #{fragment} in {resolved.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)
