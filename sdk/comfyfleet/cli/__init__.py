"""The `comfyfleet` command line (typer + rich) on the SDK: `python -m comfyfleet --help`."""

from comfyfleet.cli.app import app


def main() -> None:
    """Entry point of `python -m comfyfleet` and `sdk/bin/comfyfleet`."""
    app(prog_name="comfyfleet")


__all__ = ["app", "main"]
