"""cgconvert command line (subcommands arrive with the cgconvert issue)."""
from __future__ import annotations

import click

from engine.cli_common import version_option


@click.group(help="Inspect, fix up, convert and fetch CodeGen model files.")
@version_option("cgconvert")
def main() -> None:
    pass
