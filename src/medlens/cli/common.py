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

Every command, every group and ``medlens`` itself take ``--quiet`` (only warnings and errors on stderr, no progress
bars) and ``--verbose`` (debug logs, and the traceback of an error instead of its one line; ``MEDLENS_DEBUG=1`` does
the same), added by :func:`guarded` and :func:`command_group`: ``medlens --quiet train ...`` and ``medlens train ...
--quiet`` are the same (a stopped run still prints its resume line). Heavy libraries are imported inside the
commands, so ``medlens --help`` stays fast.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

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


# ------------------------------------------------------------------------------------- --quiet, --verbose
QUIET_HELP = "Only warnings and errors on stderr: no progress bars, no notes."
VERBOSE_HELP = "Debug logging, and the full traceback of an error."


@dataclass
class Verbosity:
    """``--quiet`` / ``--verbose`` of the command being run (given to ``medlens``, its group or the command)."""

    quiet: bool = False
    verbose: bool = False


#: the verbosity of the command being run: reset by ``medlens``'s callback, raised by each level's flags
VERBOSITY = Verbosity()


def set_verbosity(quiet: bool = False, verbose: bool = False, reset: bool = False) -> None:
    """Add one level's ``--quiet`` / ``--verbose`` to :data:`VERBOSITY` (``reset``: start from neither)."""
    if reset:
        VERBOSITY.quiet = VERBOSITY.verbose = False
    VERBOSITY.quiet |= quiet
    VERBOSITY.verbose |= verbose
    if VERBOSITY.quiet and VERBOSITY.verbose:
        fail("error: --quiet and --verbose cannot be used together")


def quiet() -> bool:
    """Whether ``--quiet`` was given: no progress bars, no notes on stderr."""
    return VERBOSITY.quiet


def show_progress(default: bool | None = None) -> bool:
    """Whether to draw progress bars: never with ``--quiet``; else ``default`` (None: when stderr is a terminal)."""
    if VERBOSITY.quiet:
        return False
    return sys.stderr.isatty() if default is None else default


def note(text: str) -> None:
    """Guidance for a person (next steps, where a file went beside JSON output) on stderr; nothing with ``--quiet``."""
    if not VERBOSITY.quiet:
        typer.echo(text, err=True)


def quiet_overrides(overrides: list[str] | None) -> list[str]:
    """``--set`` overrides of a training command, plus ``trainer.progress_bar=false`` under ``--quiet``."""
    return [*(overrides or []), *(["trainer.progress_bar=false"] if VERBOSITY.quiet else [])]


#: the options every command, group and ``medlens`` itself take
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help=VERBOSE_HELP)]


def setup_logging(verbose: bool = False) -> None:
    """Library log lines through rich on stderr: INFO, DEBUG with ``verbose`` (or ``--verbose``), WARNING with
    ``--quiet``."""
    from rich.console import Console
    from rich.logging import RichHandler

    verbose = verbose or VERBOSITY.verbose
    level = logging.DEBUG if verbose else logging.WARNING if VERBOSITY.quiet else logging.INFO
    if sys.stderr.isatty():  # a person at a terminal: rich's aligned, coloured lines
        handler: logging.Handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False, markup=False)
        fmt = "%(message)s"
    else:  # a log file or a pipe (cluster jobs, CI): plain, unwrapped lines, so URLs and paths stay whole
        handler, fmt = logging.StreamHandler(sys.stderr), "%(levelname)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, handlers=[handler], force=True)  # stderr: stdout carries results only
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:  # Lightning's internal deprecation/perf notes are not actionable for a user of the CLI
        import warnings

        warnings.filterwarnings("ignore", module=r"(lightning|pytorch_lightning)(\.|$)")


def debug() -> bool:
    """Whether tracebacks are wanted (``--verbose`` or ``MEDLENS_DEBUG=1``)."""
    return VERBOSITY.verbose or bool(os.environ.get("MEDLENS_DEBUG"))


def command_name() -> str:
    """``medlens serve``, ``medlens db import``: the command being run, for messages."""
    return " ".join(["medlens", *INVOKED])


def record_subcommand(ctx: typer.Context, reset: bool = False) -> None:
    """Group callbacks call this so messages can name the command (``medlens db init``)."""
    if reset:
        INVOKED.clear()
    if ctx.invoked_subcommand:
        INVOKED.append(ctx.invoked_subcommand)


def subgroup_callback(ctx: typer.Context, quiet: QuietOption = False, verbose: VerboseOption = False) -> None:
    """The callback of a command group (``db``, ``split``, ``runs``): records the subcommand for messages and takes
    ``--quiet`` / ``--verbose`` for all its commands."""
    set_verbosity(quiet, verbose)
    record_subcommand(ctx)


def command_group(app: typer.Typer, name: str, help: str) -> typer.Typer:
    """A command group (``medlens db ...``) added to ``app``."""
    group = typer.Typer(help=help, no_args_is_help=True, rich_markup_mode=None)
    group.callback()(subgroup_callback)
    app.add_typer(group, name=name)
    return group


#: the help of a BUNDLE argument
BUNDLE_HELP = "Bundle folder, or the run folder holding it (RUN/bundle)."


def bundle_folder(value: Path | None) -> Path | None:
    """Callback of every BUNDLE argument: a run folder becomes its bundle folder, as ``report`` reads it
    (:func:`medlens.runs.resolve_bundle`). A folder that is neither, or is ambiguous, stops with one line (exit 2);
    anything else (a path that does not exist, a file) is passed on, for the command to say so after its own checks.

    Example:
        >>> bundle_folder(Path("runs/pneumoniamnist"))  # doctest: +SKIP
        PosixPath('runs/pneumoniamnist/bundle')
    """
    if value is None or not value.is_dir():
        return value
    from medlens.runs import resolve_bundle

    try:
        return resolve_bundle(value)[0]
    except (OSError, ValueError) as e:
        fail(f"error: {error_text(e)}")


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
        fail(f"error: {type(e).__name__}: {error_text(e)} (--verbose or MEDLENS_DEBUG=1 shows the traceback)", EXIT_FAILED)
    raise e


#: the parameters :func:`guarded` adds to every command
_VERBOSITY_PARAMS = (
    inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=QuietOption),
    inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=VerboseOption),
)


def guarded(fn: Callable[..., Any], resume: ResumeHint | None = None) -> Callable[..., Any]:
    """``fn`` as a command: ``--quiet`` / ``--verbose`` added, logging set up, and every exception ending as one line
    and an exit code (:func:`exit_for`).

    Args:
        fn: the command function (its signature and help are kept for typer; it takes no quiet/verbose itself).
        resume: for commands that train: how to print the command that resumes a stopped run.

    Example:
        >>> app.command("train")(guarded(train, resume=resume_command("train")))  # doctest: +SKIP
    """
    sig = inspect.signature(fn, eval_str=True)
    if any(p.name in sig.parameters for p in _VERBOSITY_PARAMS):
        raise TypeError(f"{fn.__name__}: --quiet and --verbose are added by guarded(); remove them from the command")

    @functools.wraps(fn)
    def command(*args: Any, quiet: bool = False, verbose: bool = False, **kwargs: Any) -> Any:
        try:
            set_verbosity(quiet, verbose)
            setup_logging()
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except SystemExit as e:  # TrainingInterrupted is a SystemExit: a stopped run is never a success
            if is_interruption(e):
                exit_for(e, kwargs, resume)
            raise
        except BaseException as e:  # noqa: BLE001 -- Ctrl-C and every error end as one line
            exit_for(e, kwargs, resume)

    command.__signature__ = sig.replace(parameters=[*sig.parameters.values(), *_VERBOSITY_PARAMS])  # type: ignore[attr-defined]
    return command
