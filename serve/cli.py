"""cgserve command line (the server arrives with the cgserve issue)."""
from __future__ import annotations

import click

from engine.cli_common import version_option


@click.group(help="Serve a CodeGen model to VSCode (Fauxpilot) and OpenAI clients.")
@version_option("cgserve")
def main() -> None:
    pass
