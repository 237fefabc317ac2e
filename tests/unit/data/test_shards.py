"""Tar shards (kind: webdataset): brace expansion, member streams and random reads, the reader's label rules, and
one-line errors naming the shard and member; shards made from real PneumoniaMNIST images."""

from __future__ import annotations

import gzip
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from medlens.config import config_from_dict
from medlens.data.io import ImageReadError, load_image
from medlens.data.labels import LabelError
from medlens.data.readers import list_readers, read_dataset
from medlens.data.shards import (
    ShardError,
    expand_braces,
    expand_urls,
    iter_members,
    member_ref,
    read_member,
)
from tests._shards import add_member, http_server, png, write_shards


def _cfg(tmp_path: Path, **kw):
    urls = kw.pop("urls", {"train": str(tmp_path / "train-{000..001}.tar"), "val": str(tmp_path / "val-000.tar")})
    return config_from_dict({"data": {"kind": "webdataset", "urls": urls, "label_names": ["normal", "pneumonia"], **kw}}).data


@pytest.fixture
def shards(pneumonia_npz: Path, tmp_path: Path) -> Path:
    write_shards(pneumonia_npz, tmp_path, "train", 12, 6, text=True)
    write_shards(pneumonia_npz, tmp_path, "val", 6, 6)
    return tmp_path


def test_brace_expansion() -> None:
    assert expand_braces("s-{000..003}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar", "s-003.tar"]
    assert expand_braces("s-{8..10}.tar") == ["s-8.tar", "s-9.tar", "s-10.tar"]
    assert expand_braces("{train,val}/{0..1}.tar") == ["train/0.tar", "train/1.tar", "val/0.tar", "val/1.tar"]
    assert expand_braces("http://h:80/a.tar") == ["http://h:80/a.tar"]
    assert expand_urls(["a-{0..1}.tar", "b.tar"]) == ["a-0.tar", "a-1.tar", "b.tar"]
    with pytest.raises(ValueError, match="unmatched or empty brace"):
        expand_braces("s-{000.tar")
    with pytest.raises(ValueError, match="listed twice"):
        expand_urls(["a-{0..1}.tar", "a-1.tar"])


def test_members_stream_and_read_at_random(shards: Path) -> None:
    url = str(shards / "train-000.tar")
    members = list(iter_members(url, lambda m: m.name.endswith(".cls")))
    assert [m.name for m, _ in members][:3] == ["train_00000.png", "train_00000.cls", "train_00000.json"]
    assert all((d is None) != m.name.endswith(".cls") for m, d in members)  # only the wanted bytes are read
    with tarfile.open(url) as tf:
        for m, _ in members:
            assert read_member(member_ref(url, m)) == tf.extractfile(m.name).read()
    # a gzip-compressed shard streams and reads at random too (decompressed up to the member)
    gz = shards / "train-000.tar.gz"
    gz.write_bytes(gzip.compress(Path(url).read_bytes()))
    mgz = list(iter_members(str(gz), lambda m: True))
    assert [m for m, _ in mgz] == [m for m, _ in members]
    assert read_member(member_ref(str(gz), mgz[3][0])) == mgz[3][1]
    # over HTTP (a server without Range support: read from the start up to the member)
    with http_server(shards) as base:
        rm = list(iter_members(f"{base}/train-000.tar", lambda m: True))
        assert [m for m, _ in rm] == [m for m, _ in members]
        assert read_member(member_ref(f"{base}/train-000.tar", rm[4][0])) == rm[4][1]
        with pytest.raises(ShardError, match=r"train-009\.tar: HTTP 404"):
            list(iter_members(f"{base}/train-009.tar", lambda m: True))


def test_reader_indexes_labels_text_and_groups(shards: Path, pneumonia_npz: Path) -> None:
    assert "webdataset" in list_readers()
    t = read_dataset(_cfg(shards, group_field="patient", text_column="report"))
    assert len(t) == 18 and t.label_space.names == ("normal", "pneumonia") and t.label_space.task == "binary"
    assert t.splits.tolist() == ["train"] * 12 + ["val"] * 6
    z = np.load(pneumonia_npz)
    assert t.class_index()[:12].tolist() == z["train_labels"][:12, 0].tolist()  # .cls indices into data.label_names
    assert t.groups[0] == "train-p0" and t.groups[2] == "train-p1"
    assert t.texts[0].startswith("Chest film 0") and t.texts[-1] is None  # the val shards carry no report
    assert t.label_space.names == ("normal", "pneumonia")  # the report adds no label
    img = load_image(t.images[3])
    assert img.shape == (28, 28) and np.array_equal(img, z["train_images"][3])


def test_json_labels_and_unknowns(pneumonia_npz: Path, tmp_path: Path) -> None:
    write_shards(pneumonia_npz, tmp_path, "train", 6, 6, label="json")
    with tarfile.open(tmp_path / "val-000.tar", "w") as tf:
        z = np.load(pneumonia_npz)
        for i, lab in enumerate(["pneumonia", None, "normal", 1]):
            add_member(tf, f"v{i}.png", png(z["val_images"][i]))
            add_member(tf, f"v{i}.json", json.dumps({"label": lab}).encode())
    t = read_dataset(_cfg(tmp_path, urls={"train": str(tmp_path / "train-000.tar"), "val": str(tmp_path / "val-000.tar")},
                          label_member="json"))
    val = t.targets[t.splits == "val"]
    assert val[0].tolist() == [0.0, 1.0] and np.isnan(val[1]).all() and val[2].tolist() == [1.0, 0.0]
    assert val[3].tolist() == [0.0, 1.0]  # an index into data.label_names


def test_bad_shards_fail_in_one_line_naming_shard_and_member(shards: Path, tmp_path: Path) -> None:
    good = (shards / "train-001.tar").read_bytes()
    cut = shards / "train-001.tar"
    cut.write_bytes(good[: len(good) // 2 + 100])  # breaks off inside a member
    with pytest.raises(ShardError, match=r"train-001\.tar: .*(member|after member) train_000\d\d\.(png|cls|json)") as e:
        read_dataset(_cfg(shards))
    assert "\n" not in str(e.value)
    cut.write_bytes(b"this is not a tar file" * 40)
    with pytest.raises(ShardError, match=r"train-001\.tar: not a readable tar shard"):
        read_dataset(_cfg(shards))
    cut.unlink()
    with pytest.raises(ShardError, match=r"train-001\.tar: shard not found"):
        read_dataset(_cfg(shards))
    cut.write_bytes(good)
    # a malformed .json member, a class index without label names, a sample without an image
    bad = tmp_path / "bad"
    bad.mkdir()
    for name, members, needle in [
        ("json", {"a.png": png(np.zeros((28, 28), np.uint8)), "a.cls": b"0", "a.json": b"{oops"}, r"bad-0\.tar: member a\.json: malformed JSON"),
        ("noimg", {"b.cls": b"1", "b.txt": b"x"}, r"bad-0\.tar: sample b: no image member .* it has \.cls, \.txt"),
        ("range", {"c.png": png(np.zeros((28, 28), np.uint8)), "c.cls": b"7"}, r"bad-0\.tar: member c\.cls: class index 7 is out of range"),
    ]:
        with tarfile.open(bad / "bad-0.tar", "w") as tf:
            for k, v in members.items():
                add_member(tf, k, v)
        urls = {"train": str(bad / "bad-0.tar"), "val": str(shards / "val-000.tar")}
        with pytest.raises((ShardError, LabelError), match=needle):
            read_dataset(_cfg(shards, urls=urls, group_field="patient") if name == "json" else _cfg(shards, urls=urls))
    # a member reference to a shard that changed: the image read fails naming it
    t = read_dataset(_cfg(shards))
    (shards / "train-000.tar").write_bytes(b"\0" * 600)
    with pytest.raises(ImageReadError, match=r"train-000\.tar: member train_0000\d\.png: truncated"):
        load_image(t.images[5])


def test_config_refuses_options_that_cannot_act(tmp_path: Path) -> None:
    from medlens.config import ConfigError

    with pytest.raises(ConfigError, match="data.sampler: weighted"):
        _cfg(tmp_path, sampler="weighted")
    with pytest.raises(ConfigError, match="data.split.method: stratified cannot act"):
        _cfg(tmp_path, split={"method": "stratified"})
    with pytest.raises(ConfigError, match="data.label_field names a .json key"):
        _cfg(tmp_path, label_field="finding")
    with pytest.raises(ConfigError, match="data.text_column 'json' is also the image or the label"):
        _cfg(tmp_path, label_member="json", label_field="json", text_column="json")
    with pytest.raises(ConfigError, match="urls.val"):
        _cfg(tmp_path, urls={"train": "a.tar"})
    with pytest.raises(ValueError, match="is in both train and val"):
        read_dataset(_cfg(tmp_path, urls={"train": "a-{0..1}.tar", "val": "a-1.tar"}))


def _tar(path: Path, members: dict[str, bytes]) -> str:
    with tarfile.open(path, "w") as tf:
        for k, v in members.items():
            add_member(tf, k, v)
    return str(path)


def test_image_ext_label_field_metadata_fields_and_timeout_act(pneumonia_npz: Path, tmp_path: Path) -> None:
    import socket

    z = np.load(pneumonia_npz)
    mask = png(np.zeros((28, 28), np.uint8))
    train = {}
    for i in range(4):  # an image, a mask beside it, and a json with the label under "finding" and metadata
        train[f"s{i}.png"] = png(z["train_images"][i])
        train[f"s{i}.seg.png"] = mask
        train[f"s{i}.json"] = json.dumps({"finding": ["normal", "pneumonia"][i % 2], "age": 30 + i, "site": "A"}).encode()
    val = {"v0.png": png(z["val_images"][0]), "v0.seg.png": mask, "v0.json": json.dumps({"finding": "normal", "age": 50}).encode()}
    urls = {"train": _tar(tmp_path / "train-000.tar", train), "val": _tar(tmp_path / "val-000.tar", val)}
    kw = {"urls": urls, "label_member": "json", "label_field": "finding"}
    t = read_dataset(_cfg(tmp_path, **kw, metadata_fields=["age", "site"]))
    assert t.class_index().tolist() == [0, 1, 0, 1, 0]  # data.label_field: the .json key "finding"
    assert t.metadata["age"].tolist() == [30, 31, 32, 33, 50] and t.metadata["site"].tolist()[:4] == ["A"] * 4
    assert t.metadata["site"].isna().tolist() == [False] * 4 + [True]  # a key the sample lacks: missing
    assert np.array_equal(load_image(t.images[1]), z["train_images"][1])  # .png, first of data.image_ext
    masks = read_dataset(_cfg(tmp_path, **kw, image_ext=["seg.png"]))
    assert load_image(masks.images[1]).max() == 0  # data.image_ext: the mask member instead
    # the same keys in two shards are refused; a .cls index needs data.label_names
    dup = {"train": urls["train"], "val": _tar(tmp_path / "dup-000.tar", train)}
    with pytest.raises(ShardError, match=r"dup-000\.tar: sample key 's0' is also in .*train-000\.tar"):
        read_dataset(_cfg(tmp_path, **{**kw, "urls": dup}))
    cls = {"train": _tar(tmp_path / "cls-000.tar", {"c0.png": png(z["train_images"][0]), "c0.cls": b"1"}), "val": urls["val"]}
    with pytest.raises(LabelError, match=r"cls-000\.tar: member c0\.cls: class index 1 needs data.label_names"):
        read_dataset(config_from_dict({"data": {"kind": "webdataset", "urls": cls}}).data)
    # data.timeout_s: a server that accepts and never answers fails after the timeout, naming the shard
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/train-000.tar"
        with pytest.raises(ShardError, match=r"127\.0\.0\.1:\d+/train-000\.tar: .*timed out"):
            read_dataset(_cfg(tmp_path, urls={"train": url, "val": urls["val"]}, timeout_s=0.5))
    finally:
        silent.close()
