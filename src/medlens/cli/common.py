"""What every ``medlens`` command shares: logging, the command's name, and errors as one line with an exit code.

Every command is registered through :func:`guarded`, so every failure ends the same way (conventions: stdout
carries results, stderr one line, the exit code says what happened):

* a user error (bad config, missing file, unknown label, bad bundle, ...): ``error: <message>``, exit 2;
* a missing optional package: ``medlens serve needs the 'serve' extra: pip install 'medlens[serve]'``, exit 2;
* a run stopped by a signal (``medlens.engine.TrainingInterrupted``, or any exception with an ``exit_code``):
  ``interrupted by SIGTERM; last checkpoint saved: PATH; resume with: medlens train CONFIG --resume PATH``,
  exit 143 (SIGTERM) or 130 (Ctrl-C);
* Ctrl-C anywhere else: ``interrupted (Ctrl-C)``, exit 130;
* anything unexpected: ``error: <Type>: <message>`` and how to see the traceback, exit 1.

``--verbose`` (where a command has it) or ``MEDLENS_DEBUG=1`` shows the traceback instead (a stopped run still
prints its resume line). Heavy libraries are imported inside the commands, so ``medlens --help`` stays fast.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shlex
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click
import typer

#: exit codes (conventions 17)
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

#: the subcommand being run (``["db", "init"]``), recorded by the group callbacks for messages
INVOKED: list[str] = []

#: loggers whose INFO lines are not actionable for a user of the command line
NOISY_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "torch", "PIL", "matplotlib", "urllib3", "httpx")

#: a function that turns a command's arguments and a checkpoint into the command that resumes it
ResumeHint = Callable[[dict[str, Any], str | None], str]


def setup_logging(verbose: bool = False) -> None:
    """Library log lines through rich on stderr (DEBUG with ``verbose``, which also turns tracebacks on)."""
    from rich.console import Console
    from rich.logging import RichHandler

    if verbose:
        os.environ["MEDLENS_DEBUG"] = "1"
    if sys.stderr.isatty():  # a person at a terminal: rich's aligned, coloured lines
        handler: logging.Handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False, markup=False)
        fmt = "%(message)s"
    else:  # a log file or a pipe (cluster jobs, CI): plain, unwrapped lines, so URLs and paths stay whole
        handler, fmt = logging.StreamHandler(sys.stderr), "%(levelname)s: %(message)s"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt, handlers=[handler],
                        force=True)  # stderr: stdout carries results only (``--json``)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:  # Lightning's internal deprecation/perf notes are not actionable for a user of the CLI
        import warnings

        warnings.filterwarnings("ignore", module=r"(lightning|pytorch_lightning)(\.|$)")


def debug() -> bool:
    """Whether tracebacks are wanted (``MEDLENS_DEBUG=1`` or ``--verbose``)."""
    return bool(os.environ.get("MEDLENS_DEBUG"))


def command_name() -> str:
    """``medlens serve``, ``medlens db import``: the command being run, for messages."""
    return " ".join(["medlens", *INVOKED])


def record_subcommand(ctx: typer.Context, reset: bool = False) -> None:
    """Group callbacks call this so messages can name the command (``medlens db init``)."""
    if reset:
        INVOKED.clear()
    if ctx.invoked_subcommand:
        INVOKED.append(ctx.invoked_subcommand)


def subgroup_callback(ctx: typer.Context) -> None:
    """The callback of a command group (``db``, ``split``, ``runs``): records the subcommand for messages."""
    record_subcommand(ctx)


def command_group(app: typer.Typer, name: str, help: str) -> typer.Typer:
    """A command group (``medlens db ...``) added to ``app``."""
    group = typer.Typer(help=help, no_args_is_help=True, rich_markup_mode=None)
    group.callback()(subgroup_callback)
    app.add_typer(group, name=name)
    return group


def print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


# ------------------------------------------------------------------------------------------ errors
def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print ``message`` on stderr as one line and exit with ``code``."""
    typer.echo(one_line(message), err=True)
    raise typer.Exit(code=code)


def one_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return "; ".join(lines)


def need(extra: str, *modules: str) -> None:
    """Stop with one line naming the extra when one of ``modules`` is not installed."""
    from medlens.extras import MissingExtraError, require

    try:
        require(extra, *modules, what=command_name())
    except MissingExtraError as e:
        fail(str(e))


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "the input is wrong" (exit 2); library errors subclass these."""
    from medlens.config import ConfigError
    from medlens.runfolder import RunInUseError

    return (ConfigError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, ValueError, KeyError,
            PermissionError, RunInUseError)


def error_text(e: BaseException) -> str:
    """The message of an exception, on one line (a KeyError's key without its quotes)."""
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return one_line(text) or type(e).__name__


def interrupted_line(e: BaseException, args: dict[str, Any], resume: ResumeHint | None) -> str:
    """``interrupted by SIGTERM; last checkpoint saved: PATH; resume with: medlens train CONFIG --resume PATH``."""
    signal_name = getattr(e, "signal_name", None) or "a signal"
    checkpoint = getattr(e, "checkpoint", None)
    checkpoint = None if checkpoint is None else str(checkpoint)
    if checkpoint is None:
        line = f"interrupted by {signal_name} before a checkpoint was saved"
        return line + (f"; start again with: {resume(args, None)}" if resume else "")
    line = f"interrupted by {signal_name}; last checkpoint saved: {checkpoint}"
    return line + (f"; resume with: {resume(args, checkpoint)}" if resume else "")


def resume_command(command: str) -> ResumeHint:
    """The resume hint of a command taking ``CONFIG``, ``--set`` and ``--resume``: ``medlens train CONFIG --resume PATH``."""

    def hint(args: dict[str, Any], checkpoint: str | None) -> str:
        parts = ["medlens", command, str(args.get("config", "CONFIG"))]
        for s in args.get("set_") or []:
            parts += ["--set", s]
        return shlex.join(parts + (["--resume", checkpoint] if checkpoint else []))

    return hint


def is_interruption(e: BaseException) -> bool:
    """A run stopped by a signal: ``TrainingInterrupted`` or any exception carrying an integer ``exit_code``."""
    return isinstance(getattr(e, "exit_code", None), int) and not isinstance(e, (typer.Exit, click.exceptions.Exit))


def exit_for(e: BaseException, args: dict[str, Any] | None = None, resume: ResumeHint | None = None) -> NoReturn:
    """End the command for exception ``e``: one line on stderr and the exit code it means (see the module doc).

    With ``MEDLENS_DEBUG`` the exception is raised again (its traceback shown), except for a stopped run.
    """
    from medlens.extras import MissingExtraError, extra_for_module

    if is_interruption(e):
        fail(interrupted_line(e, args or {}, resume), int(e.exit_code))  # type: ignore[attr-defined]
    if debug():
        raise e
    if isinstance(e, KeyboardInterrupt):
        fail("interrupted (Ctrl-C)", EXIT_INTERRUPTED)
    if isinstance(e, MissingExtraError):
        fail(str(e))
    if isinstance(e, ModuleNotFoundError):
        extra = extra_for_module(e.name)
        if extra is None:
            fail(f"error: the Python package {e.name!r} is not installed (pip install {e.name})")
        fail(f"{command_name()} needs the '{extra}' extra: pip install 'medlens[{extra}]'")
    if isinstance(e, user_error_types()):
        fail(f"error: {error_text(e)}")
    if isinstance(e, Exception):
        fail(f"error: {type(e).__name__}: {error_text(e)} (MEDLENS_DEBUG=1 shows the traceback)", EXIT_FAILED)
    raise e


def guarded(fn: Callable[..., Any], resume: ResumeHint | None = None) -> Callable[..., Any]:
    """``fn`` as a command: every exception ends as one line and an exit code (:func:`exit_for`).

    Args:
        fn: the command function (its signature and help are kept for typer).
        resume: for commands that train: how to print the command that resumes a stopped run.

    Example:
        >>> app.command("train")(guarded(train, resume=resume_command("train")))  # doctest: +SKIP
    """

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except SystemExit as e:  # TrainingInterrupted is a SystemExit: a stopped run is never a success
            if is_interruption(e):
                exit_for(e, kwargs, resume)
            raise
        except BaseException as e:  # noqa: BLE001 -- Ctrl-C and every error end as one line
            exit_for(e, kwargs, resume)

    return command
