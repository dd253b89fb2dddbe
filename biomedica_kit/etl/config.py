"""What decides a build's output: :class:`BuildConfig`, the one place its defaults live.

The CLI reads its defaults from here (and from :class:`~biomedica_kit.etl.images.ImagePolicy`,
:class:`~biomedica_kit.ingest.packages.PackageLimits`,
:class:`~biomedica_kit.ingest.fetch.FetchPolicy`), so a default is written once. A config is
checked when it is made: a value no build could use is refused before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from biomedica_kit.etl.images import ImagePolicy
from biomedica_kit.ingest.packages import PackageLimits

__all__ = ["CHECKPOINT_EVERY", "BuildConfig"]

#: Packages between durable checkpoints of a build (see :mod:`biomedica_kit.etl.ledger`).
CHECKPOINT_EVERY = 1000


def _at_least(name: str, value: float, low: float) -> None:
    if value < low:
        raise ValueError(f"{name} must be at least {low}, got {value}")


@dataclass(frozen=True)
class BuildConfig:
    """Everything that decides a build's output (recorded in the manifest)."""

    shard_max_samples: int = 10_000
    shard_max_bytes: int = 1 << 30
    image: ImagePolicy = field(default_factory=ImagePolicy)
    package: PackageLimits = field(default_factory=PackageLimits)
    #: An Entrez cache folder (``biomedica enrich``'s); cached PubMed records are merged into the
    #: samples at build time, so no second version is needed for them.
    entrez_cache: str | None = None

    def __post_init__(self) -> None:
        _at_least("shard_max_samples", self.shard_max_samples, 1)
        _at_least("shard_max_bytes", self.shard_max_bytes, 1)
        img = self.image
        _at_least("image min_side", img.min_side, 1)
        # Downscaling below the smallest image kept would store icons.
        _at_least("image max_side", img.max_side, img.min_side)
        if not 1 <= img.jpeg_quality <= 100:
            raise ValueError(f"image jpeg_quality must be within 1..100, got {img.jpeg_quality}")
        _at_least("image max_pixels", img.max_pixels, 1)
        _at_least("image max_bytes", img.max_bytes, 1)
        _at_least("package max_member_bytes", self.package.max_member_bytes, 1)
        _at_least("package max_package_bytes", self.package.max_package_bytes, 1)
