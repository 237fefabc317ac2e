"""Progress bars on stderr (stdout stays clean for results)."""

from __future__ import annotations


def progress_iter(it, enabled: bool, desc: str, total: int | None = None, step: int = 1):
    """Yield from ``it`` with a rich progress bar on stderr when ``enabled`` (``step``: items per yielded element)."""
    if not enabled:
        yield from it
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    items = list(it)
    n = total if total is not None else len(items)
    done = 0
    # stderr, so that stdout stays clean for results; a non-terminal stream gets the final bar once
    with Progress(TextColumn(desc), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=False) as prog:
        task = prog.add_task(desc, total=n)
        for x in items:
            yield x
            inc = min(step, n - done) if total is not None else 1
            done += inc
            prog.advance(task, inc)
