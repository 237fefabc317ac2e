"""Hostile command lines, configs, data files, images, checkpoints and bundles.

Each case: exit code != 0, exactly one non-empty stderr line (no traceback) naming the culprit, nothing executed,
nothing written outside the case's tmp folder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from tests.hostile._helpers import (
    HOSTILE_IMAGES,
    assert_one_line,
    cli,
    edit_manifest,
    good_png,
    malicious_checkpoint,
    plain_pickle_bomb,
    snapshot,
)


def write_cfg(tmp_path: Path, data: dict | None = None, **sections) -> Path:
    raw = {
        "seed": 0,
        "data": data or {"kind": "synthetic", "num_samples": 40, "image_size": 16, "channels": 1, "batch_size": 16},
        "model": {"backbone": "resnet10t"},
        "trainer": {"max_epochs": 1, "progress_bar": False},
        "output": {"dir": str(tmp_path / "runs"), "name": "t", "overwrite": True},
    }
    for k, v in sections.items():
        raw.setdefault(k, {}).update(v)
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


# ------------------------------------------------------------------------------------------ config
CONFIG_CASES = {
    "unknown_top_key": ({"trainr": {"max_epochs": 1}}, "trainr"),
    "unknown_nested_key": ({"trainer": {"max_epoch": 3}}, "trainer.max_epoch"),
    "wrong_type_int": ({"trainer": {"max_epochs": "many"}}, "trainer.max_epochs"),
    "wrong_type_float": ({"optim": {"lr": "fast"}}, "optim.lr"),
    "wrong_type_section": ({"model": ["resnet"]}, "model"),
    "unknown_backbone": ({"model": {"backbone": "resnet9000"}}, "model.backbone"),
    "precision_bogus": ({"trainer": {"precision": 12}}, "trainer.precision"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config_is_one_line(tmp_path, case):
    override, word = CONFIG_CASES[case]
    p = write_cfg(tmp_path)
    raw = yaml.safe_load(p.read_text())
    for k, v in override.items():
        raw[k] = {**raw[k], **v} if isinstance(raw.get(k), dict) and isinstance(v, dict) else v
    p.write_text(yaml.safe_dump(raw))
    assert_one_line(cli("train", p), word)
    assert not (tmp_path / "runs").exists()


def test_precision_16_int_is_accepted():
    from medlens.config import config_from_dict

    cfg = config_from_dict({"data": {"kind": "synthetic"}, "trainer": {"precision": 16}})
    assert cfg.trainer.precision == "16"


@pytest.mark.parametrize(("text", "word"), [("{{{ not yaml", "run.yaml"), ("- a\n- list\n", "run.yaml"), ("", "run.yaml")])
def test_unparseable_config_file(tmp_path, text, word):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    assert_one_line(cli("train", p), word)


def test_missing_config_file(tmp_path):
    assert_one_line(cli("train", tmp_path / "absent.yaml"), "absent.yaml")


def test_bad_set_override(tmp_path):
    assert_one_line(cli("train", write_cfg(tmp_path), "--set", "optim.lr"), "optim.lr")


def test_output_dir_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    p = write_cfg(tmp_path, output={"dir": str(tmp_path / "afile")})
    assert_one_line(cli("train", p), "afile")
    assert (tmp_path / "afile").read_text() == "x"


def test_output_name_escaping_the_output_dir(tmp_path):
    (tmp_path / "inner").mkdir()
    p = write_cfg(tmp_path, output={"dir": str(tmp_path / "inner" / "runs"), "name": "../../escaped"})
    assert_one_line(cli("train", p), "output.name")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "inner" / "runs").exists()


# ------------------------------------------------------------------------------------------ data files
def _data_cfg(tmp_path: Path, kind: str, name: str, text: str, **kw) -> Path:
    (tmp_path / name).write_text(text)
    (tmp_path / "img").mkdir(exist_ok=True)
    for i in range(3):
        (tmp_path / "img" / f"{i}.png").write_bytes(good_png(i))
    data = {"kind": kind, "path": str(tmp_path / name), "image_size": 16, "channels": 1, **kw}
    return write_cfg(tmp_path, data)


DATA_CASES = {
    "csv_empty": ("csv", "l.csv", "", {"label_column": "label"}, "l.csv"),
    "csv_header_only": ("csv", "l.csv", "path,label\n", {"label_column": "label"}, "l.csv"),
    "csv_missing_column": ("csv", "l.csv", "path,diagnosis\nimg/0.png,a\n", {"label_column": "label"}, "'label'"),
    "csv_html_label": ("csv", "l.csv", "path,label\nimg/0.png,a\nimg/1.png,<script>alert(1)</script>\n",
                       {"label_column": "label", "label_names": ["a", "b"]}, "l.csv"),
    "jsonl_empty": ("jsonl", "l.jsonl", "", {}, "l.jsonl"),
    "jsonl_garbage_line": ("jsonl", "l.jsonl", '{"filename": "img/0.png", "labels": "a"}\n{garbage\n', {}, "line 2"),
    "jsonl_not_object": ("jsonl", "l.jsonl", '[1, 2]\n', {}, "line 1"),
    "jsonl_binary": ("jsonl", "l.jsonl", "\udcff", {}, "l.jsonl"),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_data_file_is_one_line(tmp_path, case):
    kind, name, text, kw, word = DATA_CASES[case]
    if case == "jsonl_binary":
        (tmp_path / name).write_bytes(b"\xff\xfe\x00garbage\n")
        p = _data_cfg(tmp_path, kind, name + ".tmp", "", **kw)
        raw = yaml.safe_load(p.read_text())
        raw["data"]["path"] = str(tmp_path / name)
        p.write_text(yaml.safe_dump(raw))
    else:
        p = _data_cfg(tmp_path, kind, name, text, **kw)
    assert_one_line(cli("train", p), word)
    assert not (tmp_path / "runs" / "t" / "bundle").exists()


# ------------------------------------------------------------------------------------------ images through predict
@pytest.mark.parametrize("case", sorted(HOSTILE_IMAGES))
def test_hostile_image_through_predict(pristine_bundle, tmp_path, case):
    name, data, word = HOSTILE_IMAGES[case]
    (tmp_path / name).write_bytes(data)
    before = snapshot(pristine_bundle)
    line = assert_one_line(cli("predict", pristine_bundle, tmp_path / name), word)
    assert line.startswith("could not predict ")
    assert snapshot(pristine_bundle) == before


def test_predict_out_is_a_directory(pristine_bundle, tmp_path):
    (tmp_path / "x.png").write_bytes(good_png())
    (tmp_path / "outdir").mkdir()
    assert_one_line(cli("predict", pristine_bundle, tmp_path / "x.png", "--out", tmp_path / "outdir"), "outdir", "directory")
    assert list((tmp_path / "outdir").iterdir()) == []


@pytest.mark.parametrize(("args", "word"), [
    (("predict", "{bundle}", "{img}", "--backend", "tpu"), "tpu"),
    (("predict", "{bundle}", "{img}", "--metadata", "{{not json"), "--metadata"),
    (("predict", "{tmp}/nobundle", "{img}"), "nobundle"),
    (("explain", "{bundle}", "{img}", "--out", "{tmp}/ex", "--method", "voodoo"), "voodoo"),
    (("export", "{bundle}", "--format", "tflite", "--out", "{tmp}/ex"), "tflite"),
])
def test_bad_arguments(pristine_bundle, tmp_path, args, word):
    (tmp_path / "x.png").write_bytes(good_png())
    fmt = {"bundle": pristine_bundle, "img": tmp_path / "x.png", "tmp": tmp_path}
    assert_one_line(cli(*[a.format(**fmt) for a in args]), word)


# ------------------------------------------------------------------------------------------ checkpoints
def test_malicious_checkpoint_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "PWNED"
    ck = malicious_checkpoint(tmp_path / "last.ckpt", marker)
    assert_one_line(cli("train", write_cfg(tmp_path), "--resume", ck), "last.ckpt")
    assert not marker.exists()
    assert not (tmp_path / "runs" / "t" / "bundle").exists()


def test_plain_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "PWNED"
    ck = plain_pickle_bomb(tmp_path / "evil.ckpt", marker)
    assert_one_line(cli("train", write_cfg(tmp_path), "--resume", ck), "evil.ckpt")
    assert not marker.exists()


@pytest.mark.parametrize("case", ["empty", "truncated", "garbage", "missing"])
def test_broken_checkpoint(tmp_path, case):
    import torch

    ck = tmp_path / "last.ckpt"
    if case == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(64, 64)}}, ck)
        ck.write_bytes(ck.read_bytes()[:200])
    elif case == "empty":
        ck.write_bytes(b"")
    elif case == "garbage":
        ck.write_bytes(b"not a checkpoint at all" * 10)
    assert_one_line(cli("train", write_cfg(tmp_path), "--resume", ck), "last.ckpt")
    assert not (tmp_path / "runs" / "t" / "bundle").exists()


def test_checkpoint_of_another_network(tmp_path):
    import torch

    ck = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"model.fc.weight": torch.zeros(2, 3)}, "epoch": 0, "global_step": 0}, ck)
    assert_one_line(cli("train", write_cfg(tmp_path), "--resume", ck), "another network")


# ------------------------------------------------------------------------------------------ bundles
def _tamper_weights(b: Path) -> None:
    w = b / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))


BUNDLE_CASES = {
    "tampered_weights": (_tamper_weights, "checksum"),
    "truncated_weights": (lambda b: (b / "model.safetensors").write_bytes((b / "model.safetensors").read_bytes()[:100]), "model.safetensors"),
    "missing_weights": (lambda b: (b / "model.safetensors").unlink(), "model.safetensors"),
    "missing_manifest": (lambda b: (b / "manifest.json").unlink(), "manifest.json"),
    "manifest_not_json": (lambda b: (b / "manifest.json").write_text("{nope"), "manifest.json"),
    "thresholds_strings": (lambda b: edit_manifest(b, thresholds=["high"]), "thresholds"),
    "thresholds_nan": (lambda b: edit_manifest(b, thresholds=[math.nan]), "thresholds"),
    "thresholds_bool": (lambda b: edit_manifest(b, thresholds=[True]), "thresholds"),
    "thresholds_wrong_count": (lambda b: edit_manifest(b, thresholds=[0.5, 0.5, 0.5]), "thresholds"),
    "thresholds_not_list": (lambda b: edit_manifest(b, thresholds="0.5"), "thresholds"),
    "labels_not_fitting_head": (lambda b: edit_manifest(b, task="multilabel", label_names=["a", "b", "c"], thresholds=[0.5] * 3,
                                                        label_layout=None), "label_names"),
    "temperature_zero": (lambda b: edit_manifest(b, temperature=0), "temperature"),
    "temperature_negative": (lambda b: edit_manifest(b, temperature=-2.0), "temperature"),
    "temperature_string": (lambda b: edit_manifest(b, temperature="hot"), "temperature"),
    "temperature_list_wrong_length": (lambda b: edit_manifest(b, temperature=[1.0, 2.0]), "temperature"),
}


@pytest.mark.parametrize("case", sorted(BUNDLE_CASES))
def test_bad_bundle_is_one_line(bundle, tmp_path, case):
    mutate, word = BUNDLE_CASES[case]
    mutate(bundle)
    (tmp_path / "x.png").write_bytes(good_png())
    line = assert_one_line(cli("predict", bundle, tmp_path / "x.png"), word)
    if case.startswith(("thresholds", "temperature", "labels")):
        assert "manifest.json" in line
    assert_one_line(cli("serve", bundle, "--port", "1"), word)  # refused before any socket is opened


def test_temperature_list_of_the_right_length_is_accepted(bundle):
    from medlens.bundle import load_bundle

    edit_manifest(bundle, temperature=[1.5])
    assert load_bundle(bundle).manifest.temperature == [1.5]


def test_api_key_file(tmp_path):
    from medlens.serve.app import read_api_key_file

    (tmp_path / "key").write_text("  k3y-from-file \nsecond line\n")
    assert read_api_key_file(tmp_path / "key") == "k3y-from-file"
    (tmp_path / "blank").write_text("\n")
    for f in ("blank", "absent"):
        with pytest.raises(ValueError, match=f):
            read_api_key_file(tmp_path / f)


def test_html_labels_stay_text_in_the_report(tmp_path):
    """A label name carrying markup reaches the per-image report escaped, never as a tag."""
    from fastapi.testclient import TestClient

    from medlens.serve.app import create_app
    from tests.unit._bundles import random_bundle

    evil = '<img src=x onerror="alert(1)">'
    b = random_bundle(tmp_path / "b", names=("normal", evil), intended_use="<script>alert(2)</script>")
    with TestClient(create_app(b)) as c:
        r = c.post("/v1/report", files={"file": ("x.png", good_png(), "image/png")})
        assert r.status_code == 200
        assert evil not in r.text and "<script>alert(2)" not in r.text
        assert json.loads(c.get("/v1/model").text)["label_names"][1] == evil  # data, as data
