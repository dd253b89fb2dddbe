"""Documentation that cannot drift: the API reference and every dotted name the docs cite
(datasette's pattern of testing its own documentation)."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import api_reference  # noqa: E402

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
SUBPACKAGES = {p.name for p in (ROOT / "biomedica_kit").iterdir() if p.is_dir()
               and (p / "__init__.py").is_file()}
# Parquet metadata keys spelled like module paths (biomedica_kit.json_columns, ...).
_REF = re.compile(r"biomedica_kit\.(?P<pkg>[a-z_]+)(?P<rest>(?:\.[A-Za-z_][A-Za-z0-9_]*)*)")


def test_every_library_module_declares_its_public_names():
    missing = [m for m in api_reference.library_modules()
               if not m.startswith("biomedica_kit.cli.")
               and not hasattr(importlib.import_module(m), "__all__")]
    assert not missing, f"modules without __all__: {missing}"


def test_api_reference_is_current():
    current = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert current == api_reference.render(), \
        "docs/api.md is stale: run .venv/bin/python scripts/api_reference.py"


def test_every_exported_name_exists():
    for m in api_reference.library_modules():
        mod = importlib.import_module(m)
        for name in getattr(mod, "__all__", ()):
            assert hasattr(mod, name), f"{m}.__all__ names {name!r}, which it does not define"


def _cited() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for m in _REF.finditer(doc.read_text(encoding="utf-8")):
            if m["pkg"] in SUBPACKAGES:
                out.append((doc.relative_to(ROOT).as_posix(), m[0]))
    return sorted(set(out))


@pytest.mark.parametrize("doc, ref", _cited())
def test_dotted_names_in_the_docs_resolve(doc: str, ref: str):
    parts = ref.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            assert hasattr(obj, attr), f"{doc} cites {ref}: {'.'.join(parts[:i])} has no {attr}"
            obj = getattr(obj, attr)
        return
    pytest.fail(f"{doc} cites {ref}, which does not import")
