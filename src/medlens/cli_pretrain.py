"""``medlens pretrain CONFIG``: self-supervised pretraining of the config's backbone (calls :func:`medlens.pretrain.pretrain`).

Kept in its own module and registered by ``medlens.cli`` with one line; like every command it prints one line and
exits with code 2 on a user error (``MEDLENS_DEBUG=1`` or ``--verbose`` for the traceback).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer


def pretrain_command(
    config: Annotated[Path, typer.Argument(metavar="CONFIG", help="Run config (YAML); its pretrain section sets epochs, batch size, lr, temperature.")],
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override: section.key=value (repeatable).")] = None,
    resume: Annotated[str | None, typer.Option(metavar="CHECKPOINT", help="Continue from a checkpoint (RUN/checkpoints/last.ckpt).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Debug logging, and tracebacks for errors.")] = False,
) -> None:
    """Pretrain CONFIG's backbone on its train+val images without labels (SimCLR); writes RUN/backbone.safetensors."""
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(show_path=False, markup=False)], force=True)
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "torch", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if verbose:
        os.environ["MEDLENS_DEBUG"] = "1"
    from medlens.config import ConfigError, load_config
    from medlens.pretrain import pretrain
    from medlens.runfolder import RunInUseError

    try:
        result = pretrain(load_config(config, set_ or []), resume=resume)
    except (ConfigError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, ValueError, RunInUseError) as e:
        if os.environ.get("MEDLENS_DEBUG"):
            raise
        typer.echo(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", err=True)
        raise typer.Exit(code=2) from None
    if result.info:
        typer.echo(f"backbone: {result.weights}")
        typer.echo(f"fine-tune with: model.pretrained: {result.weights}")
