"""``kind: webdataset`` -- tar shards, one list per split, local or over HTTP(S).

A sample is the run of members that share a key (:mod:`medlens.data.shards`): an image (the first of
``data.image_ext`` it has) and its label, in a ``.cls`` member (a class name, or an index into
``data.label_names``; ``-1`` or empty: unknown) or under ``data.label_field`` of a ``.json`` member (a name, an
index, or a list of them for multi-label; null or missing: unknown). Labels then follow the rule of every reader
(:func:`~medlens.data.readers._common.restrict_labels`): ``data.label_names`` is the label space, labels outside it
are filtered with one warning, unknown stays NaN with its mask. A ``.json`` may also hold the patient id
(``data.group_field``), metadata (``data.metadata_fields``) and free text (``data.text_column``, or a ``.txt``
member with ``text_column: txt``), which travels with the row and is never a label.

Reading builds the table in one pass over every shard that reads the label members only (a local shard is read
with seeks over the images; a remote one is read once as a stream); each image becomes a member reference
(:func:`medlens.data.shards.member_ref`), so validation, test, evaluation and prediction read it at random like a
file. Training does not: it streams the training shards (:mod:`medlens.data.stream`).

Example YAML::

    data:
      kind: webdataset
      urls: {train: shards/train-{000..009}.tar, val: shards/val-000.tar, test: https://host/test-{0..1}.tar}
      label_names: [normal, pneumonia]
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pandas as pd

from medlens.data.labels import LabelError, infer_task
from medlens.data.readers import READERS
from medlens.data.readers._common import restrict_labels
from medlens.data.samples import SampleTable
from medlens.data.shards import (
    Member,
    ShardError,
    display_url,
    expand_urls,
    iter_members,
    member_ref,
    shard_label,
    split_key,
)

log = logging.getLogger("medlens.data")


def shard_lists(cfg) -> dict[str, list[str]]:
    """``{split: [shard url, ...]}`` from ``data.urls`` (brace patterns expanded); a shard in two splits is refused.

    Example:
        >>> shard_lists(cfg.data)["train"][:2]  # doctest: +SKIP
        ['/data/shards/train-000.tar', '/data/shards/train-001.tar']
    """
    out: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for split in ("train", "val", "test"):
        spec = getattr(cfg.urls, split)
        if spec is None:
            continue
        try:
            urls = expand_urls(spec)
        except ValueError as e:
            raise ValueError(f"data.urls.{split}: {e}") from None
        if not urls:
            raise ValueError(f"data.urls.{split}: no shard")
        for u in urls:
            if u in owner:
                raise ValueError(f"data.urls: shard {u} is in both {owner[u]} and {split}; a shard belongs to one split")
            owner[u] = split
        out[split] = urls
    return out


class _Sample:
    """The members of one key seen so far (image reference, label text/json, text member)."""

    __slots__ = ("key", "image", "image_rank", "cls", "json", "text", "exts")

    def __init__(self, key: str) -> None:
        self.key = key
        self.image: str | None = None
        self.image_rank = 1 << 30
        self.cls: bytes | None = None
        self.json: bytes | None = None
        self.text: bytes | None = None
        self.exts: list[str] = []


def _samples(url: str, cfg):
    """The samples of one shard in order, reading only the members the table needs (labels, json, text)."""
    rank = {e.lower(): i for i, e in enumerate(cfg.image_ext)}
    wanted = {"cls", "json", *([cfg.text_column] if cfg.text_column else [])}

    def want(m: Member) -> bool:
        kx = split_key(m.name)
        return kx is not None and kx[1].lower() in wanted

    cur: _Sample | None = None
    seen: set[str] = set()
    for m, data in iter_members(url, want, cfg.timeout_s):
        kx = split_key(m.name)
        if kx is None:
            continue  # a file without an extension belongs to no sample (a README, say)
        key, ext = kx
        if cur is None or key != cur.key:
            if cur is not None:
                yield cur
            if key in seen:
                raise ShardError(f"{display_url(url)}: member {m.name}: key {key!r} appears again after other samples; a sample's "
                                 "members must be consecutive in the tar")
            seen.add(key)
            cur = _Sample(key)
        e = ext.lower()
        cur.exts.append(ext)
        if e in rank and rank[e] < cur.image_rank:
            cur.image, cur.image_rank = member_ref(url, m), rank[e]
        if e == "cls":
            cur.cls = data
        elif e == "json":
            cur.json = data
        if cfg.text_column and e == cfg.text_column.lower():
            cur.text = data
    if cur is not None:
        yield cur


def _text(data: bytes, url: str, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ShardError(f"{display_url(url)}: member {name}: not UTF-8 text ({e.reason})") from None


def _label_values(value: Any, names: list[str] | None, url: str, member: str) -> tuple[list[str] | None, bool]:
    """(label names, is_list) for one sample's raw label: a name, an index into ``names``, or a list of those."""
    def one(x: Any) -> str | None:
        if isinstance(x, bool) or not isinstance(x, str | int | float):
            raise LabelError(f"{display_url(url)}: member {member}: label {x!r} must be a name or an index")
        s = str(x).strip()
        if isinstance(x, float):
            if not x.is_integer():
                raise LabelError(f"{display_url(url)}: member {member}: label {x!r} is not a class index")
            s = str(int(x))
        if s == "":
            return None
        if s.lstrip("-").isdigit():
            i = int(s)
            if i < 0:
                return None  # -1: unknown, as in ClassLabel
            if not names:
                raise LabelError(f"{display_url(url)}: member {member}: class index {i} needs data.label_names (the names in index order)")
            if i >= len(names):
                raise LabelError(f"{display_url(url)}: member {member}: class index {i} is out of range for data.label_names {names}")
            return names[i]
        return s

    if value is None:
        return None, False
    if isinstance(value, list):
        return [x for x in (one(v) for v in value) if x is not None], True
    x = one(value)
    return (None if x is None else [x]), False


@READERS.register("webdataset")
def read_webdataset(cfg) -> SampleTable:
    """Index the shards of ``data.urls`` into a :class:`SampleTable` (labels read, images referenced, splits from the
    shard lists); see the module docstring."""
    lists = shard_lists(cfg)
    source = "webdataset " + ", ".join(f"{s}: {len(u)} shard{'s' * (len(u) != 1)}" for s, u in lists.items())
    meta_cols = list(dict.fromkeys([*cfg.metadata_fields, *((cfg.metadata.numeric + cfg.metadata.categorical) if cfg.metadata else [])]))
    needs_json = cfg.label_member == "json" or bool(cfg.group_field) or bool(meta_cols)
    ids: list[str] = []
    images: list[str] = []
    splits: list[str] = []
    where: list[str] = []
    labels: list[list[str] | None] = []
    groups: list[str | None] = []
    texts: list[str | None] = []
    meta: dict[str, list[Any]] = {c: [] for c in meta_cols}
    first_shard: dict[str, str] = {}
    any_list = any_single = False
    skipped: list[str] = []
    label_names = list(cfg.label_names) if cfg.label_names else None
    for split, urls in lists.items():
        for url in urls:
            n0 = len(ids)
            for s in _samples(url, cfg):
                name = f"{s.key}.{cfg.label_member}"
                if s.image is None:
                    msg = f"{display_url(url)}: sample {s.key}: no image member (looked for .{', .'.join(cfg.image_ext)}; it has .{', .'.join(s.exts)})"
                    if cfg.on_bad_image == "error":
                        raise ShardError(msg)
                    skipped.append(msg)
                    continue
                obj: dict[str, Any] = {}
                if s.json is not None and (needs_json or (cfg.text_column and s.text is None)):
                    try:
                        obj = json.loads(_text(s.json, url, f"{s.key}.json"))
                    except json.JSONDecodeError as e:
                        raise ShardError(f"{display_url(url)}: member {s.key}.json: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
                    if not isinstance(obj, dict):
                        raise ShardError(f"{display_url(url)}: member {s.key}.json: expected a JSON object, got {type(obj).__name__}")
                if cfg.label_member == "cls":
                    if s.cls is None:
                        raise ShardError(f"{display_url(url)}: sample {s.key}: no .cls member (data.label_member: cls; it has .{', .'.join(s.exts)})")
                    raw: Any = _text(s.cls, url, name).strip()
                else:
                    if s.json is None:
                        raise ShardError(f"{display_url(url)}: sample {s.key}: no .json member (data.label_member: json; it has .{', .'.join(s.exts)})")
                    raw = obj.get(cfg.label_field)
                    name = f"{s.key}.json ({cfg.label_field!r})"
                labs, is_list = _label_values(raw, label_names, url, name)
                any_list |= is_list
                any_single |= labs is not None and not is_list
                if s.key in first_shard:
                    raise ShardError(f"{display_url(url)}: sample key {s.key!r} is also in {first_shard[s.key]}; keys must be unique across shards")
                first_shard[s.key] = url
                ids.append(s.key)
                images.append(s.image)
                splits.append(split)
                where.append(f"{shard_label(url)}/{s.key}")
                labels.append(labs)
                if cfg.group_field:
                    g = obj.get(cfg.group_field)
                    groups.append(None if g is None else str(g))
                for c in meta_cols:
                    meta[c].append(obj.get(c))
                if cfg.text_column:
                    t = _text(s.text, url, f"{s.key}.{cfg.text_column}") if s.text is not None else obj.get(cfg.text_column)
                    if t is not None and not isinstance(t, str):
                        raise ShardError(f"{display_url(url)}: member {s.key}.json: {cfg.text_column!r} (data.text_column) must be text, got {type(t).__name__}")
                    texts.append(t if t and t.strip() else None)
            if len(ids) == n0:
                log.warning("%s: shard has no sample with an image (split %s)", display_url(url), split)
    if skipped:
        log.warning("%s: skipped %d samples without an image, e.g. %s", source, len(skipped), skipped[0])
    if not ids:
        raise ValueError(f"{source}: the shards hold no sample")
    if any_list and any_single:
        raise LabelError(f"{source}: the label is a list in some samples and a single label in others")
    multi = any_list or cfg.task == "multilabel"
    found = {x for lab in labels if lab for x in lab}
    names = sorted(found) + [x for x in label_names or [] if x not in found]
    col = {n: j for j, n in enumerate(names)}
    task = cfg.task or infer_task(label_names or names, multi)
    targets = np.full((len(ids), len(names)), np.nan, dtype=np.float32)
    for i, lab in enumerate(labels):
        if lab is None or (not multi and not lab):
            continue
        if task in ("binary", "multiclass") and len(lab) > 1:
            raise LabelError(f"{where[i]}: {len(lab)} labels for a {task} task")
        targets[i] = 0.0
        for x in lab:
            targets[i, col[x]] = 1.0
    space, targets, keep = restrict_labels(targets, names, label_names, task=cfg.task, multi=multi, source=source, where=where)
    if cfg.unknown_labels == "negative":
        targets = np.nan_to_num(targets, nan=0.0)
    has_group = bool(cfg.group_field) and any(g is not None for g in groups)
    if cfg.group_field and not has_group:
        raise KeyError(f"{source}: no sample's .json has the key {cfg.group_field!r} (data.group_field)")
    table = SampleTable(
        space, ids, images, targets, groups if has_group else None, splits,
        pd.DataFrame(meta) if meta_cols else None, source=source,
        texts=texts if cfg.text_column else None, text_column=cfg.text_column,
    )
    if not keep.all():  # single-label rows whose class is outside data.label_names
        table = table.subset(np.where(keep)[0])
    table.check_nonempty_classes()
    log.info("%s: %s samples indexed", source, ", ".join(f"{s} {int(np.sum(table.splits == s))}" for s in lists))
    return table
