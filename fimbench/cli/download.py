"""``fimbench download-data``: fetch or import a dataset into the cache (engine: :mod:`fimbench.data`)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from fimbench.cli.common import console, user_errors
from fimbench.cli.options import data_dir_option
from fimbench.errors import FimbenchError
from fimbench.names import DOWNLOADABLE


class DownloadChoice(str, Enum):
    """Datasets ``download-data`` accepts (curves-synth is generated locally, never downloaded)."""

    MNIST = "mnist"
    CURVES = "curves"
    FACES = "faces"
    ALL = "all"


class _RichProgress:
    """:class:`fimbench.data.DownloadProgress` drawn as one rich progress bar per transfer attempt."""

    def __init__(self, bar: Progress) -> None:
        self._bar = bar
        self._task: TaskID | None = None

    def start(self, name: str, total: int | None) -> None:
        self._task = self._bar.add_task(name, total=total)

    def advance(self, n: int) -> None:
        if self._task is not None:
            self._bar.advance(self._task, n)

    def finish(self) -> None:
        if self._task is not None:
            self._bar.remove_task(self._task)
            self._task = None


@user_errors
def download_data(
    name: DownloadChoice = typer.Argument(..., help="Dataset to fetch, or 'all' for mnist, curves and faces."),
    data_dir: Path | None = data_dir_option(),
    source: str | None = typer.Option(
        None,
        "--source",
        help="Import from a local .mat file (mnist_all.mat for mnist), a local folder holding the original "
        "file names, or an http(s) URL (a .mat file or a mirror's base URL) instead of the canonical sources.",
    ),
    force: bool = typer.Option(False, "--force", help="Fetch and rebuild even if the dataset is already present."),
) -> None:
    """Download a dataset (or import it from a local file/folder), verify it and cache its tensors.

    CURVES and FACES come from www.cs.toronto.edu/~jmartens (checked by structure; sha256 recorded in the
    manifest), MNIST from torchvision's mirrors (checked against torchvision's MD5s).

    Example: fimbench download-data curves --source ~/Downloads/digs3pts_1.mat
    """
    from fimbench.data import default_data_dir, download_dataset, is_present

    root = data_dir if data_dir is not None else default_data_dir()
    names = DOWNLOADABLE if name is DownloadChoice.ALL else (name.value,)
    if len(names) > 1 and source is not None and (source.endswith(".mat") or Path(source).expanduser().is_file()):
        raise FimbenchError("with 'all', --source must be a folder or a mirror's base URL, not a single file")
    for dataset in names:
        present = not force and is_present(dataset, root)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        ) as bar:
            path = download_dataset(dataset, root, source=source, force=force, progress=_RichProgress(bar))
        console.print(_summary(dataset, root, path, present), highlight=False, soft_wrap=True)


def _summary(dataset: str, root: Path, path: Path, present: bool) -> str:
    """One line: where the dataset is, its split shapes, the short sha256 of each raw file."""
    from fimbench.data import read_manifest

    manifest = read_manifest(dataset, root)
    if manifest is None:
        raise FimbenchError(f"{path} was written but its manifest is missing or does not match it")
    splits = manifest["splits"]
    hashes = ", ".join(f"{escape(item['name'])} sha256 {item['sha256'][:12]}" for item in manifest["raw_files"])
    state = " (already present; --force fetches it again)" if present else ""
    return (
        f"[bold]{dataset}[/bold]{state}: {escape(str(path))}  "
        f"train {splits['train']} / val {splits['val']} / test {splits['test']} × {splits['input_dim']}  {hashes}"
    )
