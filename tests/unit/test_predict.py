"""Predictor: every input type gives the same answer, manifest thresholds/temperature, TTA, errors per input,
and loading never runs pickled code."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medlens.bundle import MANIFEST, WEIGHTS, BundleError
from medlens.inference import Prediction, Predictor, decode_input, predict, write_predictions_csv
from tests.unit._bundles import random_bundle
from tests.unit.data.test_dicom import make_dicom


@pytest.fixture(scope="module")
def binary_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_bundle(tmp_path_factory.mktemp("p") / "binary", thresholds=[0.4], temperature=1.7)


@pytest.fixture(scope="module")
def predictor(binary_bundle: Path) -> Predictor:
    return Predictor.from_bundle(binary_bundle, batch_size=4)


def _img(seed: int, shape=(40, 36)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def test_every_input_type_gives_the_same_probabilities(predictor: Predictor, tmp_path: Path) -> None:
    img = _img(0)
    png = tmp_path / "a.png"
    Image.fromarray(img).save(png)
    dcm = make_dicom(tmp_path / "a.dcm", img)
    inputs = [
        img, str(png), png, png.read_bytes(), Image.fromarray(img), dcm, dcm.read_bytes(),
        img.astype(np.float32) / 255.0,  # floats in [0, 1] are scaled by 255, not min-max stretched
        img[None],  # (1, H, W) channel-first
        np.repeat(img[:, :, None], 3, axis=2),  # RGB with equal channels -> the same grey image
    ]
    preds = predictor.predict(inputs)
    assert len(preds) == len(inputs) and all(p.ok for p in preds), [p.error for p in preds if not p.ok]
    ref = preds[0].probabilities["abnormal"]
    for p in preds[1:]:
        assert p.probabilities["abnormal"] == pytest.approx(ref, abs=1e-6), p.source
    assert preds[5].source == str(dcm)


def test_single_input_and_predict_one(predictor: Predictor, tmp_path: Path) -> None:
    png = tmp_path / "one.png"
    Image.fromarray(_img(1)).save(png)
    many = predictor.predict(str(png))  # one path, not its characters
    assert len(many) == 1 and many[0].ok
    one = predictor.predict_one(png)
    assert one.probabilities == many[0].probabilities
    assert len(predictor.predict(_img(1)[None].repeat(3, 0))) == 1  # a 3-D array is one (C, H, W) image
    batch = predictor.predict(np.stack([_img(1), _img(2)])[..., None])  # a 4-D array is a batch
    assert len(batch) == 2 and batch[0].probabilities == one.probabilities


def test_temperature_and_thresholds_come_from_the_manifest(predictor: Predictor) -> None:
    imgs = [_img(i) for i in range(6)]
    logits = predictor.predict_arrays(imgs, logits=True)[:, 0]
    preds = predictor.predict(imgs)
    for z, p in zip(logits, preds, strict=True):
        pos = float(_sigmoid(z / 1.7))
        assert p.probabilities["abnormal"] == pytest.approx(pos, abs=1e-6)
        assert p.probabilities["normal"] == pytest.approx(1 - pos, abs=1e-6)
        assert p.thresholds == {"abnormal": 0.4}
        assert p.decisions == {"abnormal": pos >= 0.4}
        assert p.predicted == (["abnormal"] if pos >= 0.4 else ["normal"])
    raw = Predictor(predictor.bundle, calibrated=False).predict(imgs)
    assert raw[0].probabilities["abnormal"] == pytest.approx(float(_sigmoid(logits[0])), abs=1e-6)


def test_tta_averages_the_logits_of_the_image_and_its_flip(predictor: Predictor) -> None:
    img = _img(3)
    z = predictor.predict_arrays([img], logits=True)[0, 0]
    zf = predictor.predict_arrays([img[:, ::-1].copy()], logits=True)[0, 0]
    tta = Predictor(predictor.bundle, tta=True)
    assert tta.predict_arrays([img], logits=True)[0, 0] == pytest.approx(0.5 * (z + zf), abs=1e-5)
    assert abs(z - zf) > 1e-6  # the test would be vacuous for a flip-invariant output


def test_corrupt_and_unsupported_inputs_fail_alone(predictor: Predictor, tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(_img(4)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    inputs = [good, bad, tmp_path / "missing.png", b"", object(), np.zeros((2, 2, 2, 2, 2), np.uint8), _img(5)]
    preds = predictor.predict(inputs)
    assert [p.ok for p in preds] == [True, False, False, False, False, False, True]
    assert preds[1].source == str(bad) and "bad.png" in preds[1].error
    assert "not found" in preds[2].error
    assert "unsupported input type" in preds[4].error
    assert preds[0].probabilities == predictor.predict([good])[0].probabilities


def test_multiclass_and_multilabel_decisions(tmp_path: Path) -> None:
    names = ("a", "b", "c")
    mc = Predictor.from_bundle(random_bundle(tmp_path / "mc", task="multiclass", names=names))
    p = mc.predict([_img(6)])[0]
    probs = np.array([p.probabilities[n] for n in names])
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert p.predicted == [names[int(probs.argmax())]] and sum(p.decisions.values()) == 1
    ml = Predictor.from_bundle(random_bundle(tmp_path / "ml", task="multilabel", names=names, thresholds=[0.0, 1.0, 0.5]))
    q = ml.predict([_img(6)])[0]
    assert q.decisions["a"] is True and q.decisions["b"] is False
    assert q.thresholds == {"a": 0.0, "b": 1.0, "c": 0.5}
    assert q.predicted == [n for n in names if q.decisions[n]]


def test_predict_table_matches_predict(predictor: Predictor) -> None:
    from medlens.data.labels import LabelSpace
    from medlens.data.samples import SampleTable

    imgs = np.stack([_img(i, (28, 28)) for i in range(5)])
    table = SampleTable(LabelSpace(("normal", "abnormal"), "binary"), [f"s{i}" for i in range(5)], imgs, np.zeros((5, 2), np.float32), None, None, None)
    a = predictor.predict_table(table)
    b = np.array([[p.probabilities["abnormal"]] for p in predictor.predict(list(imgs))])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_predict_function_writes_a_csv(binary_bundle: Path, tmp_path: Path) -> None:
    png = tmp_path / "x.png"
    Image.fromarray(_img(7)).save(png)
    out = tmp_path / "out" / "preds.csv"
    preds = predict(binary_bundle, [str(png), str(tmp_path / "nope.png")], out=out)
    rows = out.read_text().splitlines()
    assert rows[0] == "source,prob_normal,prob_abnormal,threshold_abnormal,decision_abnormal,predicted,error"
    assert len(rows) == 3 and rows[1].startswith(str(png)) and "not found" in rows[2]
    assert preds[1].error and not list(out.parent.glob(".*tmp"))


def test_csv_writer_round_trip(binary_bundle: Path, tmp_path: Path) -> None:
    from medlens.bundle import load_bundle
    from medlens.tasks.classification import ClassPrediction

    m = load_bundle(binary_bundle).manifest
    preds = [ClassPrediction("a", None, {"normal": 0.25, "abnormal": 0.75}, {"abnormal": True}, {"abnormal": 0.5}, ["abnormal"]),
             Prediction("b", error="broken")]
    text = write_predictions_csv(preds, m.label_names, tmp_path / "p.csv", m).read_text().splitlines()
    assert text[1] == "a,0.250000,0.750000,0.5,positive,abnormal," and text[2] == "b,,,,,,broken"


def test_decode_input_rejects_bad_shapes() -> None:
    with pytest.raises(TypeError, match="shape"):
        decode_input(np.zeros((2, 2, 2, 2), np.uint8))
    img, _ = decode_input(np.array([[0, 1000], [2000, 4000]], np.uint16))  # 16-bit: min-max to uint8
    assert img.dtype == np.uint8 and img.min() == 0 and img.max() == 255


# ------------------------------------------------------------------------------------------ tampering
def _tampered_copy(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst))


def test_flipped_byte_in_weights_is_a_clear_error(binary_bundle: Path, tmp_path: Path) -> None:
    b = _tampered_copy(binary_bundle, tmp_path / "t")
    data = bytearray((b / WEIGHTS).read_bytes())
    data[-10] ^= 0xFF
    (b / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum does not match"):
        Predictor.from_bundle(b)


class _Exploit:
    """Unpickling this would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_pickled_weights_are_never_executed(binary_bundle: Path, tmp_path: Path) -> None:
    """A bundle whose weights were swapped for a malicious pickle -- with the checksum forged to match."""
    b = _tampered_copy(binary_bundle, tmp_path / "evil")
    marker = tmp_path / "marker.txt"
    buf = io.BytesIO()
    torch.save({"state_dict": _Exploit(marker)}, buf)
    (b / WEIGHTS).write_bytes(buf.getvalue())
    man = json.loads((b / MANIFEST).read_text())
    man["weights_sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    (b / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(BundleError, match="not a valid safetensors file"):
        Predictor.from_bundle(b)
    assert not marker.exists()


def test_edited_manifest_and_missing_files_are_clear_errors(binary_bundle: Path, tmp_path: Path) -> None:
    b = _tampered_copy(binary_bundle, tmp_path / "m")
    (b / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Predictor.from_bundle(b)
    c = _tampered_copy(binary_bundle, tmp_path / "w")
    (c / WEIGHTS).unlink()
    with pytest.raises(BundleError, match="missing"):
        Predictor.from_bundle(c)
    d = _tampered_copy(binary_bundle, tmp_path / "arch")
    man = json.loads((d / MANIFEST).read_text())
    man["architecture"]["num_outputs"] = 5  # weights no longer fit the declared network
    (d / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(BundleError, match="do not fit"):
        Predictor.from_bundle(d)
    with pytest.raises(ValueError, match="unknown backend"):
        Predictor.from_bundle(binary_bundle, backend="tensorrt")


def test_a_large_jpeg_reaches_the_model_as_the_training_loader_reads_it(predictor: Predictor, tmp_path: Path) -> None:
    """Training decodes a JPEG at least twice the model's size at reduced DCT scale; prediction must read the file the
    same way (a full decode is a different image after the resize: train/serve skew), from a path, bytes or a table."""
    from medlens.data.dataset import ImageDataset
    from medlens.data.io import load_image
    from medlens.data.labels import LabelSpace
    from medlens.data.samples import SampleTable

    size = predictor.manifest.preprocessing.image_size
    rng = np.random.default_rng(0)
    big = (rng.random((8 * size, 8 * size)) * 255).astype(np.uint8)
    f = tmp_path / "big.jpg"
    Image.fromarray(big).save(f, quality=90)
    table = SampleTable(LabelSpace(("normal", "abnormal"), "binary"), ["big"], [str(f)], np.zeros((1, 2), np.float32), None, None, None)
    seen = ImageDataset(table, predictor.transform, predictor.manifest.preprocessing, cache=False)[0]["image"]
    want = predictor.predict([seen_img := load_image(f, reduce_to=size)])[0].probabilities["abnormal"]
    assert np.allclose(predictor.transform(seen_img), seen)  # the training loader's input, exactly
    for p in predictor.predict([f, str(f), f.read_bytes()]):
        assert p.probabilities["abnormal"] == pytest.approx(want, abs=1e-6), p.source
    assert predictor.predict_table(table)[0, 0] == pytest.approx(want, abs=1e-6)
    full = predictor.predict([load_image(f)])[0].probabilities["abnormal"]
    assert full != pytest.approx(want, abs=1e-7)  # the full decode is another input: the check above can fail
