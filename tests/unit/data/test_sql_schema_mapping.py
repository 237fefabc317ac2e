"""data.schema: an existing (endoreg-db-shaped) database read in place, in SQLite and in a real PostgreSQL server;
data.schema.dataset picks the images of one AI dataset (a link table) or those with a column value."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens.config import config_from_dict, load_config
from medlens.data.readers import read_dataset

ROOT = Path(__file__).resolve().parents[3]

DDL = [
    "CREATE TABLE {p}label (id INTEGER PRIMARY KEY, name VARCHAR(100) NOT NULL)",
    "CREATE TABLE {p}labelset (id INTEGER PRIMARY KEY, name VARCHAR(100), version INTEGER)",
    "CREATE TABLE {p}labelset_labels (id INTEGER PRIMARY KEY, labelset_id INTEGER, label_id INTEGER)",
    "CREATE TABLE {p}frame (id INTEGER PRIMARY KEY, relative_path VARCHAR(200), video_id INTEGER)",
    "CREATE TABLE {p}annotation (id INTEGER PRIMARY KEY, frame_id INTEGER, label_id INTEGER, value BOOLEAN)",
    # endoreg-db's AI datasets: which frames belong to which dataset (a frame may be in several)
    "CREATE TABLE {p}aidataset_frames (id INTEGER PRIMARY KEY, aidataset_id INTEGER, frame_id INTEGER)",
]


def _build(engine, prefix: str, image_dir: Path) -> None:
    import sqlalchemy as sa

    labels = [(10, "blood"), (11, "polyp"), (12, "outside"), (13, "low_quality")]
    with engine.begin() as c:
        for ddl in DDL:
            c.execute(sa.text(ddl.format(p=prefix)))
        c.execute(sa.text(f"INSERT INTO {prefix}label VALUES (:i, :n)"), [{"i": i, "n": n} for i, n in labels])
        c.execute(sa.text(f"INSERT INTO {prefix}labelset VALUES (1, 'colon', 1), (2, 'colon', 2), (3, 'other', 1)"))
        # v1 = blood, polyp; v2 = blood, polyp, outside (shares two labels with v1); other = low_quality
        links = [(1, 1, 10), (2, 1, 11), (3, 2, 10), (4, 2, 11), (5, 2, 12), (6, 3, 13)]
        c.execute(sa.text(f"INSERT INTO {prefix}labelset_labels VALUES (:a, :b, :c)"), [{"a": a, "b": b, "c": d} for a, b, d in links])
        frames, anns = [], []
        rng = np.random.default_rng(0)
        for f in range(12):
            name = f"f{f}.png"
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(image_dir / name)
            frames.append({"i": 100 + f, "p": name, "v": f // 3})
            for lid in (10, 11, 12):
                if not (f == 0 and lid == 12):  # frame 0 has no 'outside' row: unknown
                    anns.append({"i": len(anns) + 1, "f": 100 + f, "l": lid, "v": bool((f + lid) % 2)})
        c.execute(sa.text(f"INSERT INTO {prefix}frame VALUES (:i, :p, :v)"), frames)
        c.execute(sa.text(f"INSERT INTO {prefix}annotation VALUES (:i, :f, :l, :v)"), anns)
        # AI dataset 1: frames 100-107; AI dataset 2: frames 104-111 (104-107 are in both)
        links = [(f, 1) for f in range(100, 108)] + [(f, 2) for f in range(104, 112)]
        c.execute(sa.text(f"INSERT INTO {prefix}aidataset_frames VALUES (:i, :d, :f)"),
                  [{"i": i, "d": d, "f": f} for i, (f, d) in enumerate(links)])


def _cfg(url: str, prefix: str, image_dir: Path, dataset: dict | None = None, **data):
    t = lambda name, **cols: {"table": f"{prefix}{name}", **cols}  # noqa: E731
    return config_from_dict({"data": {
        "kind": "sql", "url": url, "image_root": str(image_dir), "label_set": "colon", "password_env": None,
        "schema": {
            "images": t("frame", id="id", path="relative_path", group="video_id"),
            "annotations": t("annotation", image_id="frame_id", label_id="label_id", value="value"),
            "labels": t("label"), "label_sets": t("labelset"),
            "label_set_labels": t("labelset_labels", label_set_id="labelset_id", label_id="label_id"),
            **({"dataset": dataset} if dataset is not None else {}),
        }, **data}})


def _check(url: str, engine, prefix: str, image_dir: Path) -> None:
    _build(engine, prefix, image_dir)
    table = read_dataset(_cfg(url, prefix, image_dir, label_names=["outside", "polyp"]).data)  # newest version: v2
    assert list(table.label_space.names) == ["outside", "polyp"] and len(table) == 12
    assert np.isnan(table.targets[0, 0]) and table.targets[1, 1] == 0.0 and table.targets[0, 1] == 1.0  # (0+11)%2
    assert table.groups is not None and len(set(table.groups.tolist())) == 4
    prov = table.summary()["provenance"]
    assert prov["label_set"]["version"] == 2 and [lab["name"] for lab in prov["label_set"]["labels"]] == ["blood", "polyp", "outside"]
    assert prov["labels_used"] == [{"name": "outside", "id": 12, "original_index": 2}, {"name": "polyp", "id": 11, "original_index": 1}]
    assert table.subset([0, 1]).summary()["provenance"] == prov  # kept through the splits
    v1 = read_dataset(_cfg(url, prefix, image_dir, label_set_version=1).data)  # v1 shares blood/polyp with v2
    assert list(v1.label_space.names) == ["blood", "polyp"]
    with pytest.raises(ValueError, match="has no version 7"):
        read_dataset(_cfg(url, prefix, image_dir, label_set_version=7).data)
    _check_dataset_filter(url, prefix, image_dir, table)


def _check_dataset_filter(url: str, prefix: str, image_dir: Path, everything) -> None:
    link = {"table": f"{prefix}aidataset_frames", "image_id": "frame_id", "column": "aidataset_id"}
    ds2 = read_dataset(_cfg(url, prefix, image_dir, {**link, "equals": 2}, label_names=["outside", "polyp"]).data)
    assert ds2.ids.tolist() == [str(i) for i in range(104, 112)]  # only AI dataset 2's frames
    row = {i: j for j, i in enumerate(everything.ids.tolist())}
    assert np.array_equal(ds2.targets, everything.targets[[row[i] for i in ds2.ids]], equal_nan=True)  # same labels
    assert ds2.summary()["provenance"]["dataset_filter"] == {**link, "equals": 2}  # recorded with the run
    by_video = read_dataset(_cfg(url, prefix, image_dir, {"column": "video_id", "equals": 1}).data)
    assert by_video.ids.tolist() == ["103", "104", "105"]  # frames f // 3 == 1
    with pytest.raises(ValueError, match=r"data.schema.dataset selects no image \(.*aidataset_frames.aidataset_id = 9\)"):
        read_dataset(_cfg(url, prefix, image_dir, {**link, "equals": 9}).data)
    with pytest.raises(ValueError, match="data.schema.dataset.image_id names a column of a link table"):
        _cfg(url, prefix, image_dir, {"image_id": "frame_id", "column": "video_id", "equals": 1})


def test_mapped_schema_in_sqlite(tmp_path) -> None:
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'endo.db'}"
    engine = sa.create_engine(url)
    _check(url, engine, "endo_", tmp_path)
    engine.dispose()


@pytest.mark.postgres
def test_mapped_schema_in_postgresql(pg_url, tmp_path) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(pg_url)
    schema = f"t_{uuid.uuid4().hex[:8]}"
    with engine.begin() as c:
        c.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        _check(pg_url, engine, f"{schema}.", tmp_path)
    finally:
        with engine.begin() as c:
            c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


def test_endoreg_example_config_loads_and_bad_identifiers_are_refused() -> None:
    cfg = load_config(ROOT / "configs" / "endoreg_db_example.yaml")
    assert cfg.data.schema_.annotations.image_id == "frame_id" and cfg.data.dataset is None
    with pytest.raises(ValueError, match="should match pattern"):
        _cfg("sqlite://", "x; DROP TABLE y; --", Path("."))
