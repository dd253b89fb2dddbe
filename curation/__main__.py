"""``python -m curation labelstudio|review ...``: the bridge's commands without the main CLI
(the same groups ``biomedica`` loads through its ``biomedica.commands`` entry points)."""

import click

from curation.cli import labelstudio, review

__all__: list[str] = []


@click.group()
def main() -> None:
    """The Label Studio bridge."""


main.add_command(labelstudio)
main.add_command(review)

if __name__ == "__main__":
    main()
