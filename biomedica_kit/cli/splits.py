"""``biomedica split``: the article-grouped train / validation / test decision file."""

from __future__ import annotations

import click

from biomedica_kit.tables.splits import DEFAULT_FRACTIONS

__all__ = ["register"]


@click.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--name", default="default", show_default=True,
              help="The split's name: DATASET/splits/<name>.parquet.")
@click.option("--train", "train_frac", type=click.FloatRange(0, 1),
              default=DEFAULT_FRACTIONS["train"], show_default=True,
              help="Fraction of article groups for training.")
@click.option("--validation", "val_frac", type=click.FloatRange(0, 1),
              default=DEFAULT_FRACTIONS["validation"], show_default=True,
              help="Fraction of article groups for validation.")
@click.option("--test", "test_frac", type=click.FloatRange(0, 1),
              default=DEFAULT_FRACTIONS["test"], show_default=True,
              help="Fraction of article groups for testing.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the group hash (the same seed places every article the same way).")
@click.option("--fresh", is_flag=True,
              help="Ignore an existing split file (articles may move between splits).")
def split(dataset: str, name: str, train_frac: float, val_frac: float, test_frac: float,
          seed: int, fresh: bool) -> None:
    """Split DATASET into train / validation / test by article (no article on two sides).

    Articles that share an identical image are kept together. Re-running on a newer version
    keeps every article already placed where it was and places only the new ones.
    """
    from biomedica_kit.tables.splits import SplitError, make_split

    fractions = {"train": train_frac, "validation": val_frac, "test": test_frac}
    try:
        s = make_split(dataset, name=name, fractions=fractions, seed=seed, previous=not fresh)
    except (SplitError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("\n".join(s.format_lines()))


def register(group: click.Group) -> None:
    """Add ``split`` to the ``biomedica`` group."""
    group.add_command(split)
