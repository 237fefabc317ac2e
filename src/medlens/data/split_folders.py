"""``medlens split folders SRC OUT``: a class-folder tree -> ``OUT/train|val|test/<class>/`` (hard links).

The split is the one medlens makes in training (:func:`medlens.data.splits.split_indices` on the table the folder
reader builds): seeded, deterministic, stratified by class, and group-aware when ``group_regex`` names a patient
or study id in the file path, so one patient's images never land in two splits. Files are hard links (a copy where
the file system refuses links; ``link_mode`` picks symlinks or copies), so nothing is duplicated on disk.

Example:
    >>> s = split_folders("data/derm", "data/derm_split", val=0.15, test=0.15, seed=0)  # doctest: +SKIP
    >>> s.counts["val"]  # doctest: +SKIP
    {'benign': 150, 'malignant': 30}
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medlens.data.samples import SampleTable
from medlens.data.splits import split_indices

log = logging.getLogger("medlens.data")

SPLITS = ("train", "val", "test")


LINK_MODES = ("hard", "symlink", "copy")


def link_file(src: Path, dst: Path, mode: str = "hard") -> str:
    """Put ``src`` at ``dst`` as a hard link (a copy where links are refused), a symlink or a copy.

    A stale ``dst`` is replaced atomically (temporary name, then rename). Returns what was made: ``hard``,
    ``symlink``, ``copy`` or ``kept`` (``dst`` already is ``src``).

    Example:
        >>> link_file(Path("store/a.png"), Path("normal/a.png"))  # doctest: +SKIP
        'hard'
    """
    if mode not in LINK_MODES:
        raise ValueError(f"unknown link mode {mode!r}; valid: {', '.join(LINK_MODES)}")
    if dst.exists() and os.path.samefile(src, dst) and (mode == "symlink") == dst.is_symlink():
        return "kept"
    tmp = dst.with_name(f".{dst.name}.link")
    if tmp.exists() or tmp.is_symlink():
        tmp.unlink()
    made = mode
    if mode == "symlink":
        os.symlink(os.path.abspath(src), tmp)
    elif mode == "hard":
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
            made = "copy"
    else:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)
    return made


@dataclass
class SplitFoldersSummary:
    """Per split and class: the number of images written; the method (stratified or group) and the groups seen."""

    out_dir: str
    method: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    groups: int | None = None
    copied: int = 0  # files copied because a link was refused

    def lines(self) -> list[str]:
        """Per-class counts as printable lines: ``train  benign 70  malignant 14  (84)``."""
        out = []
        for split in SPLITS:
            c = self.counts.get(split, {})
            out.append(f"{split:<5}  " + "  ".join(f"{k} {v}" for k, v in c.items()) + f"  ({sum(c.values())})")
        return out


def _groups_from_regex(ids: np.ndarray, pattern: str) -> np.ndarray:
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"--group-regex {pattern!r} is not a valid regular expression: {e}") from None
    out = []
    for i in ids:
        m = rx.search(str(i))
        if m is None:
            raise ValueError(f"--group-regex {pattern!r} does not match {i!r}; every file needs a group")
        out.append(m.group(1) if rx.groups else m.group(0))
    return np.asarray(out, dtype=object)


def _overlap(a: Path, b: Path) -> bool:
    """Whether two resolved paths are the same folder or one lies inside the other."""
    return a == b or a in b.parents or b in a.parents


def check_not_own_input(src: Path, out: Path, given_src: Path | None = None, given_out: Path | None = None) -> None:
    """Refuse an output whose folders overlap the source: a command never deletes or overwrites its own input.

    ``src`` and ``out`` are resolved (symlinks followed), and so is each split folder ``out/train|val|test`` (one
    may itself be a link). Refused: ``out`` equal to or inside ``src`` (it would be read as a class), and any split
    folder that is, holds, or lies inside ``src`` (``--clear-existing`` would delete the source, and the links
    would be written into it). ``split folders DATA/train DATA`` is the case that deleted its own source.

    Raises:
        ValueError: one line naming both folders.

    Example:
        >>> check_not_own_input(Path("/d/train"), Path("/d"))
        Traceback (most recent call last):
        ...
        ValueError: the output /d would write /d/train, which is the source /d/train: a split never deletes or overwrites its own source; choose an output folder outside /d/train (e.g. /d/train_split)
    """
    shown_src = given_src if given_src is not None else src
    hint = f"choose an output folder outside {shown_src} (e.g. {src.parent / (src.name + '_split')})"
    if out == src or src in out.parents:
        raise ValueError(f"the output {given_out or out} is {'the source' if out == src else 'inside the source'} {shown_src}: "
                         f"a split never writes into its own source; {hint}")
    for split in SPLITS:
        target = (out / split).resolve()
        if _overlap(target, src):
            how = "which is" if target == src else "which holds" if target in src.parents else "which lies inside"
            raise ValueError(f"the output {given_out or out} would write {out / split}, {how} the source {shown_src}: "
                             f"a split never deletes or overwrites its own source; {hint}")


def _inside_source(table: SampleTable, src: Path, roots: list[Path]) -> SampleTable:
    """Leave out (one warning line each) images that are links to files outside ``src`` and ``roots``: a copy or
    link of them would carry a file from elsewhere on the machine (``/etc/shadow``) into the split tree."""
    keep = []
    for i, path in enumerate(table.images):
        real = Path(str(path)).resolve()
        if any(real == r or r in real.parents for r in (src, *roots)):
            keep.append(i)
        else:
            log.warning("split folders: %s left out: it is a link to %s, outside the source folder %s "
                        "(--follow-links keeps such files)", table.ids[i], real, src)
    if len(keep) == len(table):
        return table
    if not keep:
        raise ValueError(f"{src}: every image is a link to a file outside the source folder; nothing to split")
    return table.subset(np.asarray(keep, dtype=np.int64))


def split_folders(src: str | Path, out: str | Path, val: float = 0.15, test: float = 0.15, seed: int = 0,
                  group_regex: str | None = None, clear_existing: bool = False, link_mode: str = "hard",
                  follow_links: bool = False, link_roots: tuple[str | Path, ...] = ()) -> SplitFoldersSummary:
    """Split the class folders under ``src`` into ``out/train``, ``out/val`` and ``out/test``.

    Args:
        src: ``src/<class>/<images>`` (sub-folders inside a class are kept in the file name).
        out: output folder; its ``train``/``val``/``test`` folders must not exist unless ``clear_existing``.
        val: validation share. test: test share (0 makes no test folder).
        seed: split seed (the same seed gives the same split).
        group_regex: a regular expression on the image path relative to ``src``; its first group (or the whole
            match) is the patient/study id, and each group stays in one split.
        clear_existing: delete ``out/train``, ``out/val`` and ``out/test`` first (never when one of them is, holds
            or lies inside ``src``: see :func:`check_not_own_input`).
        link_mode: ``hard`` (default; copy where refused), ``symlink`` or ``copy``.
        follow_links: keep images that are symbolic links to files outside ``src`` (a tree of links into an image
            store). Off by default: such an image is left out with a warning line, whatever the mode, so a planted
            link (``evil.png -> /etc/shadow``) is never copied or linked into the split tree.
        link_roots: folders outside ``src`` that links may point into without ``follow_links`` (``download``
            passes its own file store).

    Returns:
        :class:`SplitFoldersSummary` with the per-class counts.
    """
    from medlens.config import FolderData
    from medlens.data.readers import read_dataset

    given_src, given_out = Path(src), Path(out)
    src, out = given_src.resolve(), given_out.resolve()
    if not src.is_dir():
        raise FileNotFoundError(f"source folder not found: {given_src}")
    check_not_own_input(src, out, given_src, given_out)
    table = read_dataset(FolderData(root=str(src), task="multiclass"))
    if table.splits is not None:
        raise ValueError(f"{src} is already split into train/val/test folders; give the class-folder root")
    if not follow_links:
        table = _inside_source(table, src, [Path(r).resolve() for r in link_roots])
    if group_regex:
        table = SampleTable(table.label_space, table.ids, table.images, table.targets, _groups_from_regex(table.ids, group_regex),
                            None, None, table.source)
    splits = split_indices(table, "group" if group_regex else "stratified", val, test, seed)
    existing = [out / s for s in SPLITS if (out / s).exists()]
    if existing and not clear_existing:
        raise FileExistsError(f"{existing[0]} exists; use --clear-existing to replace the split folders")
    for d in existing:
        shutil.rmtree(d)
    names = list(table.label_space.names)
    cls = table.class_index()
    summary = SplitFoldersSummary(str(out), splits.method,
                                  groups=None if table.groups is None else len(set(table.groups.tolist())))
    for split, rows in splits.as_dict().items():
        counts = dict.fromkeys(names, 0)
        for r in rows:
            label = names[int(cls[r])]
            rel = Path(str(table.ids[r])).relative_to(label)  # ids are paths relative to src: <class>/<...>
            dst = out / split / label / "__".join(rel.parts)  # sub-folders of a class kept in the name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if link_file(Path(str(table.images[r])), dst, link_mode) == "copy" and link_mode != "copy":
                summary.copied += 1
            counts[label] += 1
        summary.counts[split] = counts
    for line in summary.lines():
        log.info("split folders: %s", line)
    return summary
