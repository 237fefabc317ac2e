"""Tar shards in the WebDataset layout, read with the standard library.

A shard is a plain ``.tar`` (or ``.tar.gz``) file; consecutive members that share a key (the name up to the first
dot of its base name) form one sample: ``xr_0001.png``, ``xr_0001.cls``, ``xr_0001.json``. Shards are named by a
local path, ``file://`` URL or ``http(s)://`` URL, in lists written with shell braces (``train-{000..009}.tar``,
``{a,b}.tar``, see :func:`expand_braces`).

Two ways in:

* :func:`iter_members` streams a shard front to back (a local file is read with seeks over the members not
  wanted; a URL is read as one HTTP response, never stored);
* :func:`read_member` reads one member at random through a reference that :func:`member_ref` made from the byte
  offset the stream saw (a seek in a local file, an HTTP ``Range`` request for a URL; a server that ignores ranges
  is read from the start up to the member). :func:`medlens.data.io.load_image` understands these references, so
  a table whose images live in shards is read by every consumer like a table of files.

Every failure is a :class:`ShardError` of one line naming the shard and, where there is one, the member.

Why not the ``webdataset`` package (1.0.2, maintained): medlens needs control that its pipeline does not give:
exact mid-epoch resume (a fixed order of samples per ``(seed, epoch, stream)`` and skipping what was trained),
its own rule for dealing shards to loader workers and DDP ranks, random reads of validation/test members, and
one-line errors naming the member. Its HTTP reads go through a ``curl`` subprocess by default. What would be left
to borrow is brace expansion and tar iteration, about a hundred lines over ``tarfile`` and ``urllib`` -- no new
dependency.

Example:
    >>> expand_braces("shards-{000..002}.tar")
    ['shards-000.tar', 'shards-001.tar', 'shards-002.tar']
"""

from __future__ import annotations

import gzip
import os
import re
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

#: prefix of a shard member reference (:func:`member_ref`)
REF_PREFIX = "shard:"
#: seconds an HTTP connection or read may stall before the shard is reported unreadable
DEFAULT_TIMEOUT_S = 60.0
_RANGE = re.compile(r"\{(-?\d+)\.\.(-?\d+)\}")
_LIST = re.compile(r"\{([^{}]*,[^{}]*)\}")


class ShardError(ValueError):
    """A shard or one of its members could not be read; the message names the shard and the member."""


def expand_braces(pattern: str) -> list[str]:
    """Shell-style brace expansion: ``{000..009}`` (numeric range; zero padding kept) and ``{a,b,c}`` (a list).

    Several braces expand left to right, as the shell does. A pattern without braces is returned as it is.

    Example:
        >>> expand_braces("{train,val}-{0..1}.tar")
        ['train-0.tar', 'train-1.tar', 'val-0.tar', 'val-1.tar']
    """
    r, lst = _RANGE.search(pattern), _LIST.search(pattern)
    first = min((m for m in (r, lst) if m is not None), key=lambda m: m.start(), default=None)
    if first is None:
        if "{" in pattern or "}" in pattern:
            raise ValueError(f"{pattern!r}: unmatched or empty brace (write {{000..009}} or {{a,b}})")
        return [pattern]
    head, tail = pattern[: first.start()], pattern[first.end() :]
    if first is r:
        a, b = first.group(1), first.group(2)
        lo, hi = int(a), int(b)
        width = max(len(a), len(b)) if (a.startswith("0") and len(a) > 1) or (b.startswith("0") and len(b) > 1) else 0
        step = 1 if hi >= lo else -1
        items = [f"{i:0{width}d}" for i in range(lo, hi + step, step)]
    else:
        items = first.group(1).split(",")
    return [head + x + rest for x in items for rest in expand_braces(tail)]


def expand_urls(spec: str | Sequence[str]) -> list[str]:
    """One shard list from a pattern or a list of patterns (each brace-expanded), in order, duplicates refused.

    Example:
        >>> expand_urls(["a-{0..1}.tar", "b.tar"])
        ['a-0.tar', 'a-1.tar', 'b.tar']
    """
    out: list[str] = []
    for p in [spec] if isinstance(spec, str) else list(spec):
        out.extend(expand_braces(str(p).strip()))
    seen: set[str] = set()
    for u in out:
        if u in seen:
            raise ValueError(f"shard {u!r} is listed twice")
        seen.add(u)
    return out


def is_remote(url: str) -> bool:
    """Whether a shard is read over HTTP(S)."""
    return url.startswith(("http://", "https://"))


def local_path(url: str) -> Path:
    """The file of a local shard (a path or a ``file://`` URL)."""
    if url.startswith("file://"):
        return Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    return Path(url)


def _gz(url: str) -> bool:
    return url.lower().split("?", 1)[0].endswith((".gz", ".tgz"))


def _http(url: str, timeout: float, start: int | None = None, end: int | None = None):
    req = urllib.request.Request(url, headers={"User-Agent": "medlens"})
    if start is not None:
        req.add_header("Range", f"bytes={start}-{'' if end is None else end}")
    try:
        return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - http(s) only (is_remote)
    except urllib.error.HTTPError as e:
        raise ShardError(f"{display_url(url)}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise ShardError(f"{display_url(url)}: cannot connect ({getattr(e, 'reason', e)})") from None


def open_shard(url: str, timeout: float = DEFAULT_TIMEOUT_S) -> BinaryIO:
    """A binary stream of the shard's bytes (a local file, or an HTTP response read as it arrives)."""
    if is_remote(url):
        return _http(url, timeout)
    p = local_path(url)
    try:
        return open(p, "rb")  # noqa: SIM115 - the caller closes it
    except FileNotFoundError:
        raise ShardError(f"{display_url(url)}: shard not found") from None
    except OSError as e:
        raise ShardError(f"{display_url(url)}: cannot read ({e})") from None


def split_key(name: str) -> tuple[str, str] | None:
    """(sample key, extension) of a member name: the key runs to the first dot of the base name (WebDataset's
    rule), so ``a/xr_1.seg.png`` is key ``a/xr_1``, extension ``seg.png``; None for a name without an extension.

    Example:
        >>> split_key("batch1/xr_0001.png")
        ('batch1/xr_0001', 'png')
    """
    m = re.match(r"^((?:.*/|)[^./]+)\.([^/]*)$", name)
    return None if m is None else (m.group(1), m.group(2))


@dataclass(frozen=True)
class Member:
    """One file in a shard: its name, where its bytes start in the (uncompressed) tar stream, and its size."""

    name: str
    offset: int
    size: int


def iter_members(url: str, want: Callable[[Member], bool], timeout: float = DEFAULT_TIMEOUT_S) -> Iterator[tuple[Member, bytes | None]]:
    """Every regular file of a shard in order, with its bytes when ``want(member)`` says so (else None).

    A local uncompressed shard is read with seeks over the members not wanted; anything else is read front to
    back as a stream.

    Raises:
        ShardError: the shard is missing, not a tar file, or breaks off; the message names the member being read
            (or the last one read whole).
    """
    f = open_shard(url, timeout)
    last = None
    current = None
    try:
        seekable = not is_remote(url) and not _gz(url)
        try:
            tf = tarfile.open(fileobj=f, mode="r:" if seekable else "r|*")
        except (tarfile.ReadError, EOFError, OSError, gzip.BadGzipFile) as e:
            raise ShardError(f"{display_url(url)}: not a readable tar shard ({_why(e)})") from None
        with tf:
            while True:
                try:
                    info = tf.next()
                except (tarfile.ReadError, EOFError, OSError, gzip.BadGzipFile) as e:
                    if seekable and current is not None and os.path.getsize(local_path(url)) < current.offset + current.size:
                        have = max(0, os.path.getsize(local_path(url)) - current.offset)
                        raise ShardError(f"{display_url(url)}: member {current.name}: cut off ({have} of {current.size} bytes; the shard "
                                         "is truncated)") from None
                    where = f"after member {last}" if last else "at its first member"
                    raise ShardError(f"{display_url(url)}: broken {where} ({_why(e)})") from None
                if info is None:
                    break
                if not info.isfile():
                    continue
                current = Member(info.name, info.offset_data, info.size)
                data = None
                if want(current):
                    try:
                        fh = tf.extractfile(info)
                        data = fh.read() if fh is not None else b""
                    except (tarfile.ReadError, EOFError, OSError, gzip.BadGzipFile) as e:
                        raise ShardError(f"{display_url(url)}: member {info.name}: cannot read ({_why(e)})") from None
                    if len(data) != info.size:
                        raise ShardError(f"{display_url(url)}: member {info.name}: truncated ({len(data)} of {info.size} bytes)")
                last = info.name
                yield current, data
    except TimeoutError:
        raise ShardError(f"{display_url(url)}: no data for {timeout:g} s while reading {current.name if current else 'its first member'}") from None
    finally:
        f.close()


def display_url(url: str) -> str:
    """A shard as messages name it: a password or token in its URL replaced by ``***``."""
    from medlens.config import redact_url

    return redact_url(url)


def _why(e: BaseException) -> str:
    return str(e) or type(e).__name__


# ------------------------------------------------------------------------------------------ member references
def member_ref(url: str, member: Member) -> str:
    """A string naming one member for random reads: ``shard:<offset>:<size>:<quoted name>:<url>``.

    Example:
        >>> member_ref("s/train-0.tar", Member("xr 1.png", 512, 2048))
        'shard:512:2048:xr%201.png:s/train-0.tar'
    """
    return f"{REF_PREFIX}{member.offset}:{member.size}:{urllib.parse.quote(member.name, safe='')}:{url}"


def is_member_ref(value: object) -> bool:
    """Whether a table's image entry is a shard member reference rather than a file path."""
    return isinstance(value, str) and value.startswith(REF_PREFIX)


def parse_ref(ref: str) -> tuple[str, Member]:
    """(shard url, member) of a reference made by :func:`member_ref`.

    Example:
        >>> parse_ref("shard:512:2048:xr%201.png:s/train-0.tar")
        ('s/train-0.tar', Member(name='xr 1.png', offset=512, size=2048))
    """
    try:
        off, size, name, url = ref[len(REF_PREFIX) :].split(":", 3)
        return url, Member(urllib.parse.unquote(name), int(off), int(size))
    except ValueError:
        raise ShardError(f"{ref!r}: not a shard member reference") from None


def ref_name(ref: str) -> str:
    """How a reference is named in messages: ``<shard>/<member>``."""
    url, m = parse_ref(ref)
    return f"{display_url(url)}/{m.name}"


def read_member(ref: str, timeout: float = DEFAULT_TIMEOUT_S) -> bytes:
    """The bytes of one member, read at random (see the module docstring).

    Raises:
        ShardError: the shard is missing or shorter than the reference says (it changed since it was indexed).
    """
    url, m = parse_ref(ref)
    if m.size == 0:
        return b""
    if not is_remote(url) and not _gz(url):
        try:
            with open(local_path(url), "rb") as f:
                f.seek(m.offset)
                data = f.read(m.size)
        except FileNotFoundError:
            raise ShardError(f"{display_url(url)}: shard not found (member {m.name})") from None
        except OSError as e:
            raise ShardError(f"{display_url(url)}: member {m.name}: cannot read ({e})") from None
    else:
        resp = None
        try:
            if is_remote(url) and not _gz(url):
                resp = _http(url, timeout, m.offset, m.offset + m.size - 1)
                if getattr(resp, "status", 200) == 206:
                    data = resp.read(m.size)
                else:  # the server ignored the range: read from the start up to the member
                    _skip(resp, m.offset)
                    data = resp.read(m.size)
            else:  # a compressed shard has no random access: decompress up to the member
                resp = open_shard(url, timeout)
                z = gzip.GzipFile(fileobj=resp)
                _skip(z, m.offset)
                data = z.read(m.size)
        except (OSError, EOFError, TimeoutError) as e:
            raise ShardError(f"{display_url(url)}: member {m.name}: cannot read ({_why(e)})") from None
        finally:
            if resp is not None:
                resp.close()
    if len(data) != m.size:
        raise ShardError(f"{display_url(url)}: member {m.name}: truncated ({len(data)} of {m.size} bytes; did the shard change after it was indexed?)")
    return data


def _skip(f: BinaryIO, n: int) -> None:
    while n > 0:
        chunk = f.read(min(n, 1 << 20))
        if not chunk:
            raise EOFError("the shard ends before the member")
        n -= len(chunk)


def shard_label(url: str) -> str:
    """A short name of a shard for logs: its file name (``train-003.tar``)."""
    return os.path.basename(urllib.parse.urlparse(url).path if is_remote(url) else url) or url
