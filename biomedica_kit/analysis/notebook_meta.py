"""What a notebook declares about itself: whether a report runs it, and what data it needs.

A notebook's own metadata (``metadata["biomedica"]`` of the ``.ipynb``) says::

    {"report": true, "requires": ["clusters/*/config.json"],
     "hint": "run `biomedica cluster DATASET` first"}

``report`` (default false): :func:`biomedica_kit.analysis.report.report` runs it when no
notebooks are named. ``requires`` (default none): paths relative to the dataset folder, each a
plain path or a glob pattern (``*``, ``?``, ``[...]``); every one must match at least one
non-empty file or non-empty folder (temporaries of an unfinished writer, ``.tmp-*``, do not
count), else the notebook is skipped and the report says which requirement was missing.
``hint`` (optional) is added to that reason. docs/notebooks.md documents the convention.

:func:`plan` splits a list of notebooks into those to run and those to skip (with reasons);
:func:`default_notebooks` lists the ones that declare ``report: true``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from biomedica_kit.base.atomic import is_temporary

__all__ = ["META_KEY", "NotebookMeta", "NotebookMetaError", "Skipped", "default_notebooks",
           "missing_requirements", "plan", "read_meta"]

#: The key of a notebook's metadata that holds its declaration.
META_KEY = "biomedica"
_FIELDS = frozenset({"report", "requires", "hint"})


class NotebookMetaError(ValueError):
    """A notebook's ``metadata["biomedica"]`` is malformed (so a typo cannot go unnoticed)."""


@dataclass(frozen=True)
class NotebookMeta:
    """A notebook's declaration (the defaults when it declares nothing)."""

    report: bool = False
    requires: tuple[str, ...] = ()
    hint: str | None = None


@dataclass(frozen=True)
class Skipped:
    """A notebook a report did not run, and why."""

    name: str
    reason: str


def read_meta(path: str | os.PathLike) -> NotebookMeta:
    """The declaration in ``path``'s metadata; :class:`NotebookMetaError` if malformed."""
    p = Path(path)
    try:
        nb = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NotebookMetaError(f"{p}: not a readable notebook ({exc})") from None
    raw: Any = (nb.get("metadata") or {}).get(META_KEY)
    if raw is None:
        return NotebookMeta()
    if not isinstance(raw, dict):
        raise NotebookMetaError(f"{p}: metadata[{META_KEY!r}] must be an object")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise NotebookMetaError(f"{p}: unknown metadata[{META_KEY!r}] field(s) {unknown} "
                                f"(known: {sorted(_FIELDS)})")
    report = raw.get("report", False)
    requires = raw.get("requires", [])
    hint = raw.get("hint")
    if not isinstance(report, bool):
        raise NotebookMetaError(f"{p}: 'report' must be true or false")
    if not isinstance(requires, list) or not all(isinstance(r, str) and r for r in requires):
        raise NotebookMetaError(f"{p}: 'requires' must be a list of paths")
    for r in requires:
        pure = PurePosixPath(r)
        if pure.is_absolute() or ".." in pure.parts or "\\" in r:
            raise NotebookMetaError(f"{p}: requirement {r!r} must be a relative path inside "
                                    "the dataset (forward slashes, no '..')")
    if hint is not None and not isinstance(hint, str):
        raise NotebookMetaError(f"{p}: 'hint' must be a string")
    return NotebookMeta(report=report, requires=tuple(requires), hint=hint)


def _non_empty(path: Path, root: Path) -> bool:
    if any(is_temporary(Path(part)) for part in path.relative_to(root).parts):
        return False
    if path.is_file():
        return path.stat().st_size > 0
    return path.is_dir() and any(not is_temporary(c) for c in path.iterdir())


def missing_requirements(dataset: str | os.PathLike, meta: NotebookMeta) -> list[str]:
    """The requirements of ``meta`` that ``dataset`` does not meet (in declared order)."""
    root = Path(dataset)
    return [r for r in meta.requires
            if not any(_non_empty(p, root) for p in root.glob(r))]


def default_notebooks(folder: str | os.PathLike) -> list[Path]:
    """The notebooks of ``folder`` that declare ``report: true``, in name order."""
    return [p for p in sorted(Path(folder).glob("*.ipynb")) if read_meta(p).report]


def plan(dataset: str | os.PathLike, notebooks: list[Path]) -> tuple[list[Path], list[Skipped]]:
    """``notebooks`` split into those whose requirements ``dataset`` meets and those skipped."""
    run: list[Path] = []
    skipped: list[Skipped] = []
    for nb in notebooks:
        meta = read_meta(nb)
        missing = missing_requirements(dataset, meta)
        if not missing:
            run.append(nb)
            continue
        reason = "needs " + ", ".join(f"`{m}`" for m in missing) + " in the dataset"
        skipped.append(Skipped(nb.stem, reason + (f" ({meta.hint})" if meta.hint else "")))
    return run, skipped
