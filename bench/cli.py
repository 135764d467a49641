"""cgbench command line (subcommands arrive with the cgbench issue)."""
from __future__ import annotations

import click

from engine.cli_common import version_option


@click.group(help="Measure latency and memory of CodeGen variants on this machine.")
@version_option("cgbench")
def main() -> None:
    pass
