"""The on-disk PubMed record cache: one file per PMID, written atomically, resumable.

``<dir>/<last 3 PMID digits>/<pmid>.xml`` holds a record exactly as efetch returned it;
``<pmid>.status.json`` an answer that is not a record (``not_found``, ``failed``) with its
reason and time. The E-utilities client (:mod:`biomedica_kit.enrich.efetch`) fills it; builds
read it back (:func:`biomedica_kit.etl.pubmed.load_cached`) with no network at all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from biomedica_kit.base.atomic import atomic_write_bytes

__all__ = ["STATUSES", "EntrezCache", "Status", "cache_status", "iter_cached_pmids",
           "normalise_pmids"]

Status = Literal["ok", "not_found", "failed"]


STATUSES: tuple[Status, ...] = ("ok", "not_found", "failed")


class EntrezCache:
    """The raw PubMed record store: ``<dir>/<last 3 PMID digits>/<pmid>.xml`` (the record)
    and ``<pmid>.status.json``.

    Sharding by the last digits spreads millions of PMIDs evenly over 1,000 directories.
    A record file wins over a status file: it is only written from a real answer.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _dir(self, pmid: str) -> Path:
        return self.root / pmid[-3:].zfill(3)

    def record_path(self, pmid: str) -> Path:
        """Where ``pmid``'s record XML lies."""
        return self._dir(pmid) / f"{pmid}.xml"

    def status_path(self, pmid: str) -> Path:
        """Where ``pmid``'s not_found / failed status lies."""
        return self._dir(pmid) / f"{pmid}.status.json"

    def lookup(self, pmid: str) -> tuple[Status | None, str | None]:
        """(status, reason) from the cache; (None, None) when the PMID was never fetched."""
        if self.record_path(pmid).is_file():
            return "ok", None
        try:
            info = json.loads(self.status_path(pmid).read_bytes())
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError) as exc:
            return "failed", f"unreadable status file: {exc}"
        status = info.get("status")
        if status not in STATUSES:
            return "failed", f"bad status in status file: {status!r}"
        return status, info.get("reason")

    def answer_age_days(self, pmid: str) -> float | None:
        """Days since a not_found / failed answer was stored (None without one)."""
        try:
            info = json.loads(self.status_path(pmid).read_bytes())
            when = datetime.fromisoformat(info["checked_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return (datetime.now(UTC) - when).total_seconds() / 86400

    def put_record(self, pmid: str, xml: bytes) -> None:
        """Store a record (and forget any earlier negative status)."""
        atomic_write_bytes(self.record_path(pmid), xml)
        self.status_path(pmid).unlink(missing_ok=True)

    def put_status(self, pmid: str, status: Status, reason: str | None) -> None:
        """Store a not_found / failed answer with its reason and time."""
        info = {
            "pmid": pmid,
            "status": status,
            "reason": reason,
            "checked_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        atomic_write_bytes(self.status_path(pmid), json.dumps(info).encode())


def normalise_pmids(pmids: Iterable[str | int]) -> tuple[list[str], dict[str, str]]:
    """Canonical PMIDs (digits, no leading zeros), de-duplicated in first-seen order, plus the
    reason why each value that cannot be a PMID is not one."""
    valid: dict[str, None] = {}
    invalid: dict[str, str] = {}
    for raw in pmids:
        text = str(raw).strip()
        if text.isascii() and text.isdigit() and int(text) > 0:
            valid.setdefault(str(int(text)), None)
        else:
            invalid[text] = f"invalid PMID {text!r}: not a positive integer"
    return list(valid), invalid


def cache_status(
    pmids: Iterable[str | int], cache_dir: str | os.PathLike[str]
) -> dict[str, tuple[Status | None, str | None]]:
    """(status, reason) per PMID as the cache knows it; status ``None`` = never fetched."""
    cache = EntrezCache(cache_dir)
    wanted, invalid = normalise_pmids(pmids)
    result: dict[str, tuple[Status | None, str | None]] = {p: cache.lookup(p) for p in wanted}
    result.update({p: ("failed", why) for p, why in invalid.items()})
    return result


def iter_cached_pmids(cache_dir: str | os.PathLike[str]) -> Iterator[str]:
    """Every PMID with a record in the cache (any order)."""
    for path in Path(cache_dir).glob("[0-9][0-9][0-9]/*.xml"):
        yield path.stem

