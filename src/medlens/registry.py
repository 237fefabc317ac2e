"""A tiny string registry: ``create_x(name, **kw)`` and ``list_x()`` for readers, models, losses, ...

An unknown name raises an error that lists the valid ones (the timm ``models/_registry.py`` pattern).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

T = TypeVar("T", bound=Callable[..., Any])


def close_matches(word: str, choices: Iterable[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """The ``choices`` a misspelt ``word`` most likely meant, best first (at most ``n``; empty when none is close).

    Ranked by difflib's similarity ratio plus the share of ``word`` that is a common prefix (a name is usually
    misspelt at its end: ``resnet1`` is ``resnet18``, not ``cspresnet50``), shorter names first on a tie (the
    common base model before its variants). Case is ignored.

    Example:
        >>> close_matches("resnet1", ["cspresnet50", "resnet18", "resnet152", "resnet18d", "eca_resnet33ts"])
        ['resnet18', 'resnet152', 'resnet18d']
        >>> close_matches("max_epoch", ["max_epochs", "min_epochs", "precision"], n=1)
        ['max_epochs']
    """
    w = word.lower()
    if not w:
        return []
    matcher = difflib.SequenceMatcher()
    matcher.set_seq2(w)
    scored: list[tuple[float, int, str]] = []
    for choice in choices:
        c = choice.lower()
        matcher.set_seq1(c)
        if matcher.real_quick_ratio() < cutoff or matcher.quick_ratio() < cutoff:
            continue
        ratio = matcher.ratio()
        if ratio < cutoff:
            continue
        prefix = len(os.path.commonprefix([w, c]))
        scored.append((ratio + 0.5 * prefix / len(w), -len(choice), choice))
    scored.sort(key=lambda t: (-t[0], -t[1], t[2]))
    return [choice for _, _, choice in scored[:n]]


def did_you_mean(word: str, choices: Iterable[str], n: int = 1) -> str:
    """`` (did you mean resnet18?)`` for a misspelt name, or an empty string when nothing is close.

    Example:
        >>> "unknown backbone 'resnet1'" + did_you_mean("resnet1", ["resnet18", "resnet50", "vgg11"], n=2)
        "unknown backbone 'resnet1' (did you mean resnet18 or resnet50?)"
    """
    close = close_matches(word, choices, n=n)
    if not close:
        return ""
    return f" (did you mean {close[0] if len(close) == 1 else ', '.join(close[:-1]) + ' or ' + close[-1]}?)"


class Registry(Generic[T]):
    """Maps names to factories.

    Example:
        >>> losses = Registry("loss")
        >>> @losses.register("bce")
        ... def make_bce(): return "bce"
        >>> losses.create("bce")
        'bce'
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(fn: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            self._items[name] = fn
            return fn

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._items))}") from None

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
