"""HTML pieces for the self-contained reports (escaped cells, tables, embedded PNG figures, the page shell).

Reports open offline: styles inline, images as data URIs, no scripts. Every value reaches the page through
:func:`esc` (or :func:`fmt`, which escapes what is not a number).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from typing import Any

import numpy as np


def esc(x: Any) -> str:
    """HTML-escape any value's text."""
    return html.escape(str(x), quote=True)


def fmt(x: Any, digits: int = 3) -> str:
    """A number for a table cell; undefined values read 'n/a'."""
    if x is None or (isinstance(x, float) and x != x):
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.{digits}f}"
    return esc(x)


def ci_text(entry: dict[str, Any] | None, digits: int = 3) -> str:
    """'0.812 (0.771-0.850)' from a bootstrap entry; 'n/a' parts where undefined."""
    if not entry or entry.get("value") is None:
        return "n/a"
    if entry.get("low") is None:
        return f"{fmt(entry['value'], digits)} <span class=muted>(CI n/a)</span>"
    return f"{fmt(entry['value'], digits)} <span class=ci>({fmt(entry['low'], digits)}&ndash;{fmt(entry['high'], digits)})</span>"


def html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    """A table; cells are inserted as given (format and escape them before)."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def html_img(png: bytes | None, alt: str, caption: str = "") -> str:
    """An embedded PNG figure (data URI), or a note when there is none."""
    if not png:
        return f'<p class="muted">{esc(alt)}: not available.</p>'
    b64 = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{b64}">{cap}</figure>'


CSS = """
body{font-family:-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d2733;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px;background:#fff}
h1{font-size:1.6em;margin:.2em 0}h2{font-size:1.25em;border-bottom:2px solid #e3e7ec;padding-bottom:4px;margin-top:2em}
h3{font-size:1.05em;margin-top:1.4em}
table{border-collapse:collapse;margin:.6em 0;font-size:.86em}
th,td{border:1px solid #dfe3e8;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#f0f3f6;text-align:center}td:first-child,th:first-child{text-align:left}
.ci{color:#5b6b7b;font-size:.9em}.muted{color:#8592a0}
.met{color:#0b7a30;font-weight:600}.notmet{color:#b3261e;font-weight:600}
.warn{background:#fff6e0;border-left:4px solid #f0a500;padding:6px 10px;margin:4px 0;font-size:.9em}
.disclaimer{background:#eef4fb;border-left:4px solid #2f6db3;padding:8px 12px;font-size:.9em}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:1em 0}
.card{border:1px solid #dfe3e8;border-radius:6px;padding:10px 14px;min-width:170px}
.card .v{font-size:1.5em;font-weight:600}.card .l{font-size:.8em;color:#5b6b7b}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eef0f3}
figcaption{font-size:.85em;color:#5b6b7b}
code{background:#f0f3f6;padding:1px 4px;border-radius:3px}
"""


def html_page(title: str, body: str) -> str:
    """A complete standalone HTML page (inline CSS, no scripts, no external resources)."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>{body}</main></body></html>\n"
    )
