"""``medlens pretrain CONFIG``: self-supervised pretraining of the config's backbone (:func:`medlens.pretrain.pretrain`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medlens.cli.common import guarded, quiet_overrides, resume_command


def pretrain(
    config: Annotated[Path, typer.Argument(metavar="CONFIG", help="Run config (YAML); its pretrain section sets epochs, batch size, lr, temperature.")],
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override: section.key=value (repeatable).")] = None,
    resume: Annotated[str | None, typer.Option(metavar="CHECKPOINT", help="Continue from a checkpoint (RUN/checkpoints/last.ckpt).")] = None,
) -> None:
    """Pretrain CONFIG's backbone on its train+val images without labels (SimCLR); writes RUN/backbone.safetensors."""
    from medlens.config import load_config
    from medlens.pretrain import pretrain as pretrain_run

    result = pretrain_run(load_config(config, quiet_overrides(set_)), resume=resume)
    if result.info:
        typer.echo(f"backbone: {result.weights}")
        typer.echo(f"fine-tune with: model.pretrained: {result.weights}")


def register(app: typer.Typer) -> None:
    app.command("pretrain")(guarded(pretrain, resume=resume_command("pretrain")))
