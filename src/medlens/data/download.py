"""``medlens download CSV --out DIR``: fetch images listed as ``url,class`` rows into a class-folder tree.

* Downloads run concurrently (``workers`` threads), each with a timeout and retries with exponential backoff
  (network errors, 5xx, 408 and 429 are retried; other 4xx are not).
* Each file is capped at ``max_bytes`` (default :data:`DEFAULT_MAX_BYTES`, 100 MiB): a larger declared length is
  refused before reading, a longer stream is cut off and discarded; either is a listed failure, not retried.
* Failed rows are listed; the CLI exits 1 when any row failed (with their count), 0 only when every row is in.
* Files are stored once under ``DIR/.files/`` (a URL listed for two classes is fetched once) and the class
  tree ``DIR/<class>/<name>`` is made of hard links into it (a copy where the file system refuses links), so
  ``kind: folder, root: DIR`` trains on it directly.
* Resumable: every file is written to a temporary name and renamed when complete, so a file that exists is
  complete and is kept; running the command again fetches only what is missing.
* Safe names: class names and file names are reduced to ``[A-Za-z0-9._-]`` (no separators, no leading dots),
  and every target is checked to lie inside ``DIR``; a row that cannot be made safe is a listed failure, and
  only ``http``/``https`` URLs are fetched. Nothing is written outside ``DIR``.
* A summary per CSV (``DIR/download_summary_<csv name>.json``; the latest run also as ``download_summary.json``)
  lists the per-class counts and every failed row with its reason; a second CSV does not overwrite the first's.
* ``source="isic"`` keeps each source's files apart (``DIR_sources/isic/<class>/<name>``) and consolidates them
  into the class tree as ``DIR/<class>/isic__<name>``, so several sources merge without name clashes.
* ``link_mode``: ``hard`` (default; a copy where the file system refuses), ``symlink`` or ``copy``.
* ``split_after_download=0.85`` then writes a stratified, seeded ``DIR_split/train|val/<class>/`` tree (85% train)
  with :func:`medlens.data.split_folders.split_folders`.

Example:
    >>> from medlens.data.download import download
    >>> summary = download("urls.csv", "data/xrays", workers=8)  # doctest: +SKIP
    >>> summary.failed  # doctest: +SKIP
    []
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medlens._atomic import write_text_atomic
from medlens.data.split_folders import LINK_MODES, link_file

log = logging.getLogger("medlens.download")

STORE = ".files"  # hidden, so the folder reader does not take it for a class
SUMMARY = "download_summary.json"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
USER_AGENT = "medlens-downloader/0.1"
#: bytes one file may have: a full-field mammogram DICOM is 30-60 MB and a dermoscopy JPEG a few MB, so 100 MiB
#: holds any single image with room, while a hostile or mistaken URL (a video, a disk image) cannot fill the disk
DEFAULT_MAX_BYTES = 100 * 2**20


class _TooLarge(Exception):
    """A response over the byte cap (not retried: it will not shrink)."""


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"


@dataclass
class Row:
    """One CSV row after validation."""

    line: int
    url: str
    label: str  # sanitised class folder name
    name: str  # sanitised file name in the store


@dataclass
class Failure:
    """A row that was not downloaded or linked, and why."""

    line: int
    url: str
    label: str
    reason: str


@dataclass
class DownloadSummary:
    """Counts and failures of a :func:`download` run."""

    out_dir: str
    rows: int = 0
    downloaded: int = 0
    kept: int = 0  # complete files from an earlier run
    linked: int = 0
    bytes: int = 0
    failed: list[Failure] = field(default_factory=list)
    classes: dict[str, int] = field(default_factory=dict)
    source: str | None = None
    summary_path: str | None = None
    split_dir: str | None = None
    split_counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    def class_lines(self) -> list[str]:
        """Per-class counts (of this run's rows in the class tree), then per split when a split was made."""
        lines = [f"{k}: {v}" for k, v in sorted(self.classes.items())]
        for split, c in self.split_counts.items():
            lines.append(f"{split}: " + ", ".join(f"{k} {v}" for k, v in c.items()) + f" ({sum(c.values())})")
        return lines


def safe_name(text: str, fallback: str = "") -> str:
    """A file or folder name that cannot escape its parent: ``[A-Za-z0-9._-]``, no leading dots.

    Example:
        >>> safe_name("../../etc/passwd")
        'etc_passwd'
        >>> safe_name("Pleural effusion")
        'Pleural_effusion'
    """
    s = _SAFE.sub("_", text.strip())
    s = s.strip("._-")  # no hidden files, no "." or ".."
    s = re.sub(r"_+", "_", s)
    return s[:150] if s else fallback


def _inside(root: Path, target: Path) -> bool:
    try:
        target.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def read_url_csv(path: str | os.PathLike) -> tuple[list[Row], list[Failure]]:
    """Parse a ``url,class`` CSV (header optional; extra columns ignored) into rows and rejected rows.

    File names come from the URL path (percent-decoded, sanitised); two URLs with the same name get a short
    hash of the URL appended, so names are stable across runs.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"download list not found: {p}")
    rows: list[Row] = []
    bad: list[Failure] = []
    used: dict[str, str] = {}  # store name -> url
    seen: set[tuple[str, str]] = set()
    renamed: dict[str, str] = {}
    with open(p, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        url_col, cls_col = 0, 1
        for lineno, rec in enumerate(reader, start=1):
            if not rec or all(not c.strip() for c in rec):
                continue
            if lineno == 1 and not rec[0].strip().lower().startswith(("http://", "https://", "ftp://", "file:")) and "://" not in rec[0]:
                header = [c.strip().lower() for c in rec]
                if "url" not in header:
                    raise ValueError(f"{p}: line 1: expected a header with 'url' and 'class' columns or a url,class row; got {rec}")
                url_col = header.index("url")
                cls_col = next((header.index(c) for c in ("class", "label", "category") if c in header), 1 if url_col != 1 else 0)
                continue
            url = rec[url_col].strip() if len(rec) > url_col else ""
            raw_cls = rec[cls_col].strip() if len(rec) > cls_col else ""
            parsed = urllib.parse.urlsplit(url)
            if parsed.scheme.lower() not in ("http", "https") or not parsed.netloc:
                bad.append(Failure(lineno, url, raw_cls, "only http(s) URLs are downloaded"))
                continue
            label = safe_name(raw_cls)
            if not label:
                bad.append(Failure(lineno, url, raw_cls, f"class {raw_cls!r} is empty or has no usable characters"))
                continue
            if label != raw_cls and raw_cls not in renamed:
                renamed[raw_cls] = label
                log.warning("%s: line %d: class %r is stored as folder %r", p, lineno, raw_cls, label)
            base = safe_name(urllib.parse.unquote(Path(parsed.path).name), "")
            digest = hashlib.sha1(url.encode()).hexdigest()[:10]
            if not base:
                base = f"file_{digest}"
            name = base
            if used.get(name, url) != url:  # same name, different URL
                stem, dot, ext = base.rpartition(".")
                name = f"{stem}_{digest}.{ext}" if dot and stem else f"{base}_{digest}"
            used[name] = url
            if (url, label) in seen:
                continue
            seen.add((url, label))
            rows.append(Row(lineno, url, label, name))
    return rows, bad


def _fetch(url: str, dest: Path, timeout: float, retries: int, backoff: float, opener: Callable,
           max_bytes: int = DEFAULT_MAX_BYTES) -> int:
    """Download ``url`` to ``dest`` through a temporary file; returns the number of bytes.

    At most ``max_bytes`` are stored: a larger ``Content-Length`` is refused before the body is read, and a stream
    that runs past the cap is cut off; the partial file is removed either way.
    """
    tmp = dest.with_name(f".{dest.name}.{threading.get_ident()}.part")
    last: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
            with opener(req, timeout=timeout) as resp:
                expected = resp.headers.get("Content-Length")
                if expected is not None and expected.isdigit() and int(expected) > max_bytes:
                    raise _TooLarge(f"{int(expected)} bytes declared, over the {_mib(max_bytes)} cap per file (--max-mb)")
                n = 0
                with open(tmp, "wb") as f:
                    while True:
                        chunk = resp.read(1 << 16)
                        if not chunk:
                            break
                        n += len(chunk)
                        if n > max_bytes:
                            raise _TooLarge(f"more than the {_mib(max_bytes)} cap per file (--max-mb); stopped reading")
                        f.write(chunk)
            if expected is not None and expected.isdigit() and int(expected) != n:
                raise OSError(f"incomplete download: {n} of {expected} bytes")
            if n == 0:
                raise OSError("empty response")
            os.replace(tmp, dest)  # atomic: a file under its final name is always complete
            return n
        except _TooLarge as e:
            raise RuntimeError(str(e)) from None
        except urllib.error.HTTPError as e:
            last = e
            if e.code not in _RETRY_STATUS:
                break
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            last = e
        finally:
            if tmp.exists():
                tmp.unlink()
    if isinstance(last, urllib.error.HTTPError):
        raise RuntimeError(f"HTTP {last.code} {last.reason}")
    reason = getattr(last, "reason", None) or last
    raise RuntimeError(f"{type(last).__name__}: {reason} (after {retries + 1} attempts)")


def download(
    csv_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    workers: int = 8,
    timeout: float = 30.0,
    retries: int = 3,
    backoff: float = 0.5,
    opener: Callable | None = None,
    source: str | None = None,
    link_mode: str = "hard",
    split_after_download: float | None = None,
    progress: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> DownloadSummary:
    """Download every ``url,class`` row of a CSV into ``out_dir/<class>/<name>``.

    Args:
        csv_path: the list (header ``url,class`` optional).
        out_dir: output folder (created); nothing is written outside it.
        workers: concurrent downloads.
        timeout: seconds per connection attempt (connect and each read).
        retries: extra attempts after a failure that may be temporary.
        backoff: seconds before the first retry; doubles each time.
        opener: ``urllib.request.urlopen``-like callable (tests inject one).
        source: a source name: its files are kept under ``<out_dir>_sources/<source>/<class>/`` and enter the
            class tree as ``<source>__<name>``.
        link_mode: how the class tree refers to stored files: ``hard``, ``symlink`` or ``copy``.
        split_after_download: the train share (e.g. 0.85) of a stratified, seeded split written to
            ``<out_dir>_split/train|val/<class>/`` after the download.
        progress: show a progress bar (the CLI turns it on).
        max_bytes: the most bytes one file may have (default 100 MiB); a larger file is a listed failure.

    Returns:
        :class:`DownloadSummary` (also written to ``out_dir/download_summary.json``).

    Example:
        >>> s = download("urls.csv", "data/derm", workers=8)  # doctest: +SKIP
    """
    if workers < 1:
        raise ValueError("workers must be >= 1")
    if not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"--max-mb: the cap per file must be positive, got {max_bytes!r} bytes")
    if link_mode not in LINK_MODES:
        raise ValueError(f"--link-mode {link_mode!r}: valid: {', '.join(LINK_MODES)}")
    if split_after_download is not None and not 0.0 < split_after_download < 1.0:
        raise ValueError(f"--split-after-download {split_after_download}: the train share must be between 0 and 1, e.g. 0.85")
    if source is not None and safe_name(source) != source:
        raise ValueError(f"--source {source!r}: use letters, digits, '.', '_' or '-' only")
    out = Path(out_dir)
    rows, bad = read_url_csv(csv_path)
    out.mkdir(parents=True, exist_ok=True)
    if source is None:
        store = out / STORE
    else:  # outside DIR, so the folder reader never sees it; one folder per source keeps their files apart
        store = out.parent / f"{out.name}_sources" / source
    store.mkdir(parents=True, exist_ok=True)
    summary = DownloadSummary(str(out), rows=len(rows) + len(bad), failed=list(bad), source=source)
    opener = opener or urllib.request.urlopen
    by_name: dict[str, list[Row]] = {}
    for r in rows:
        by_name.setdefault(r.name, []).append(r)
    lock = threading.Lock()

    def stored(name: str) -> Path:
        return store / name if source is None else store / by_name[name][0].label / name

    def one(name: str) -> tuple[str, int | None, str | None]:
        dest = stored(name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not _inside(store, dest):  # defence in depth: names are sanitised already
            return name, None, "file name escapes the output folder"
        if dest.is_file() and dest.stat().st_size > 0:
            return name, -1, None  # complete from an earlier run
        try:
            return name, _fetch(by_name[name][0].url, dest, timeout, retries, backoff, opener, max_bytes), None
        except RuntimeError as e:
            return name, None, str(e)

    total = len(by_name)
    done = 0
    from medlens.progress import progress_iter

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(one, name) for name in by_name]
        for fut in progress_iter(as_completed(futures), progress and total > 0, "downloading", total=total):
            name, n, err = fut.result()
            done += 1
            with lock:
                if err is not None:
                    for r in by_name[name]:
                        summary.failed.append(Failure(r.line, r.url, r.label, err))
                    continue
                if n == -1:
                    summary.kept += 1
                else:
                    summary.downloaded += 1
                    summary.bytes += int(n or 0)
                for r in by_name[name]:
                    cls_dir = out / r.label
                    dst = cls_dir / (r.name if source is None else f"{source}__{r.name}")
                    if not _inside(out, dst) or r.label == STORE:
                        summary.failed.append(Failure(r.line, r.url, r.label, "class folder escapes the output folder"))
                        continue
                    cls_dir.mkdir(exist_ok=True)
                    link_file(stored(name), dst, link_mode)
                    summary.linked += 1
                    summary.classes[r.label] = summary.classes.get(r.label, 0) + 1
            if not progress and total >= 20 and done % max(1, total // 10) == 0:
                log.info("downloaded %d/%d files", done, total)
    summary.failed.sort(key=lambda f: f.line)
    if split_after_download is not None:
        from medlens.data.split_folders import split_folders

        split_dir = out.parent / f"{out.name}_split"
        sp = split_folders(out, split_dir, val=round(1.0 - split_after_download, 6), test=0.0, seed=0, clear_existing=True,
                           link_mode=link_mode, link_roots=(store,))  # the class tree links into this run's store
        summary.split_dir = str(split_dir)
        summary.split_counts = {k: v for k, v in sp.counts.items() if k != "test"}
    per_csv = out / f"{SUMMARY.removesuffix('.json')}_{safe_name(Path(csv_path).stem, 'list')}.json"
    summary.summary_path = str(per_csv)
    text = json.dumps(summary.as_dict(), indent=2)
    write_text_atomic(per_csv, text)  # one per CSV: the next list does not overwrite it
    write_text_atomic(out / SUMMARY, text)  # and the latest run's under a fixed name
    log.info(
        "%s: %d files downloaded, %d kept from an earlier run, %d failed", out, summary.downloaded, summary.kept, len(summary.failed)
    )
    return summary
