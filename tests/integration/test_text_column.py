"""data.text_column: free text (a report) kept with each row, carried to the predictions CSV and the per-image
report, never a label; on real NIH chest X-rays."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from medlens.config import ConfigError, config_from_dict
from medlens.data.readers.csv import read_csv
from medlens.data.readers.jsonl import read_jsonl

REPORTS = {"0_normal": "Lungs clear. No effusion <b>or</b> pneumothorax.", "1_abnormal": "Right lower lobe opacity, Mass?"}


def _write_csv(nih_dir: Path, folder: Path, n: int = 12) -> Path:
    rows = []
    for cls in REPORTS:
        for p in sorted((nih_dir / "train" / cls).glob("*.png"))[:n]:
            rows.append({"path": str(p), "label": cls, "report": f"{p.stem}: {REPORTS[cls]}"})
    rows[0]["report"] = ""  # a row without a report: no text, still a training row
    path = folder / "rows.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "report"])
        w.writeheader()
        w.writerows(rows)
    return path


def _data(path: Path, **kw) -> dict:
    return {"kind": "csv", "path": str(path), "label_column": "label", "image_size": 32, "channels": 1, **kw}


def test_the_text_is_kept_with_its_row_and_never_a_label(nih_dir: Path, tmp_path: Path) -> None:
    path = _write_csv(nih_dir, tmp_path, 4)
    table = read_csv(config_from_dict({"data": _data(path, text_column="report")}).data)
    assert table.label_space.names == ("0_normal", "1_abnormal")  # the report adds no label
    assert table.texts[0] is None and table.texts[1].endswith(REPORTS["0_normal"])
    sub = table.subset([5, 1])
    assert sub.texts.tolist() == [table.texts[5], table.texts[1]] and sub[0].text == table.texts[5]
    assert table.summary()["text_column"] == "report" and table.summary()["rows_with_text"] == 7
    assert read_csv(config_from_dict({"data": _data(path)}).data).texts is None
    with pytest.raises(ConfigError, match="data.text_column 'label' is also the image or a label column"):
        config_from_dict({"data": _data(path, text_column="label")})
    with pytest.raises(KeyError, match=r"column 'impression' \(data.text_column\) not found"):
        read_csv(config_from_dict({"data": _data(path, text_column="impression")}).data)
    lines = [{"filename": str(p), "labels": [cls], "findings": REPORTS[cls]}
             for cls in REPORTS for p in sorted((nih_dir / "train" / cls).glob("*.png"))[:2]]
    jl = tmp_path / "rows.jsonl"
    jl.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    jt = read_jsonl(config_from_dict({"data": {"kind": "jsonl", "path": str(jl), "text_column": "findings", "group_field": None}}).data)
    assert jt.texts.tolist() == [x["findings"] for x in lines] and jt.label_space.names == ("0_normal", "1_abnormal")


def test_predict_carries_the_text_to_the_csv_and_the_report(nih_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medlens.cli import app
    from tests.unit._bundles import random_bundle

    path = _write_csv(nih_dir, tmp_path, 2)
    # a bundle whose training data named its report column (what a run with data.text_column: report records)
    bundle = random_bundle(tmp_path / "bundle", config={"data": _data(path, text_column="report")})
    images = [str(p) for p in sorted((nih_dir / "test" / "1_abnormal").glob("*.png"))[:2]]
    texts = tmp_path / "reports.csv"
    texts.write_text(f"image,report\n{images[0]},\"Left effusion, <script>x</script>\"\n")  # the 2nd image has none
    out = tmp_path / "preds.csv"
    r = CliRunner().invoke(app, ["predict", str(bundle), *images, "--out", str(out), "--text", str(texts)])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(out.open()))
    assert [row["report"] for row in rows] == ["Left effusion, <script>x</script>", ""]  # the bundle's data.text_column
    r = CliRunner().invoke(app, ["predict", str(bundle), *images, "--json", "--text", str(texts)])
    assert r.exit_code == 0, r.output
    records = json.loads(r.stdout)
    assert [x["text"] for x in records] == ["Left effusion, <script>x</script>", None]  # travels with the record
    assert all(f["label"] != "Left effusion" for x in records for f in x["findings"])  # never a label
    bad = CliRunner().invoke(app, ["predict", str(bundle), *images, "--text", str(path.with_name("none.csv"))])
    assert bad.exit_code == 2 and "--text" in bad.output


def test_the_per_image_report_shows_the_carried_text_escaped(nih_dir: Path, tmp_path: Path) -> None:
    import numpy as np

    from medlens.bundle import read_manifest
    from medlens.clinical_report import image_report_html
    from medlens.inference import predict
    from tests.unit._bundles import random_bundle

    bundle = random_bundle(tmp_path / "bundle")
    image = str(sorted((nih_dir / "test" / "0_normal").glob("*.png"))[0])
    pred = predict(bundle, [image], texts=["Heart size normal. <img src=x onerror=alert(1)>"])[0]
    assert pred.text == "Heart size normal. <img src=x onerror=alert(1)>"
    page = image_report_html(np.zeros((8, 8), np.uint8), pred, [], read_manifest(bundle))
    assert "Heart size normal. &lt;img src=x onerror=alert(1)&gt;" in page and "<img src=x" not in page
    assert "id='carried-text'" in image_report_html(np.zeros((8, 8), np.uint8), pred, [], read_manifest(bundle))
    pred.text = None
    assert "carried-text" not in image_report_html(np.zeros((8, 8), np.uint8), pred, [], read_manifest(bundle))


def test_hugging_face_datasets_carry_a_text_column(nih_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    rows = [(str(p), cls, f"{p.stem}: {REPORTS[cls]}") for cls in REPORTS for p in sorted((nih_dir / "train" / cls).glob("*.png"))[:3]]
    rows[1] = (rows[1][0], rows[1][1], None)  # a row without a report
    ds = datasets.Dataset.from_dict({"image": [r[0] for r in rows], "label": [r[1] for r in rows], "report": [r[2] for r in rows]})
    ds.to_parquet(str(tmp_path / "rows.parquet"))
    cfg = {"kind": "hf", "path": str(tmp_path / "rows.parquet"), "image_size": 32, "channels": 1}
    from medlens.data.readers import read_dataset

    table = read_dataset(config_from_dict({"data": {**cfg, "text_column": "report"}}).data)
    assert table.label_space.names == ("0_normal", "1_abnormal")  # the report adds no label
    assert table.texts.tolist() == [r[2] for r in rows] and table.summary()["rows_with_text"] == 5
    assert read_dataset(config_from_dict({"data": cfg}).data).texts is None
    with pytest.raises(ConfigError, match="data.text_column 'label' is also the image or the label column"):
        config_from_dict({"data": {**cfg, "text_column": "label"}})
    with pytest.raises(KeyError, match=r"column 'impression' \(data.text_column\) not found"):
        read_dataset(config_from_dict({"data": {**cfg, "text_column": "impression"}}).data)
