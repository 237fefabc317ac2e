"""MetadataEncoder: training-split statistics, unknown bucket, missing values, one encoding path, persistence."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medlens.config import CsvData, MetadataConfig
from medlens.data.labels import LabelSpace
from medlens.data.metadata import MetadataEncoder, MetadataError
from medlens.data.readers import read_dataset
from medlens.data.samples import SampleTable
from medlens.data.splits import split_indices

META = MetadataConfig(numeric=["age"], categorical=["sex", "site"])


def table_with(meta: dict[str, list], splits: list[str] | None = None) -> SampleTable:
    n = len(next(iter(meta.values())))
    targets = np.zeros((n, 2), np.float32)
    targets[:, 0] = 1
    return SampleTable(
        LabelSpace(("neg", "pos"), "binary"), [f"r{i}" for i in range(n)], [f"r{i}.png" for i in range(n)], targets,
        splits=splits, metadata=pd.DataFrame(meta), source="mem.csv",
    )


def col(enc: MetadataEncoder, name: str) -> int:
    return enc.feature_names.index(name)


def test_statistics_come_from_the_training_split_only():
    table = table_with(
        {"age": ["20", "40", "30", "90", "95"], "sex": ["male", "female", "male", "other", "other"], "site": ["back"] * 5},
        splits=["train", "train", "train", "test", "test"],
    )
    s = split_indices(table, "predefined", val_fraction=0.0)
    enc = MetadataEncoder.fit(table.subset(s.train), META)
    num = enc.to_dict()["numeric"][0]
    assert num["mean"] == pytest.approx(30.0)
    assert num["std"] == pytest.approx(np.std([20, 40, 30]))
    assert num["count"] == 3
    # a value seen only in the test split is not in the vocabulary: it is 'unknown'
    assert enc.to_dict()["categorical"][0]["vocabulary"] == ["female", "male"]
    x = enc.transform_table(table.subset(s.test))
    assert x[0, col(enc, "age")] == pytest.approx((90 - 30) / np.std([20, 40, 30]))
    assert (x[:, col(enc, "sex=unknown")] == 1).all()


def test_unseen_category_maps_to_unknown_in_rows_and_tables():
    enc = MetadataEncoder.fit(table_with({"age": ["50", "60"], "sex": ["male", "female"], "site": ["back", "face"]}), META)
    x = enc.transform_rows([{"age": 55, "sex": "intersex", "site": "moon"}])
    assert x[0, col(enc, "sex=unknown")] == 1 and x[0, col(enc, "site=unknown")] == 1
    assert x[0, [col(enc, "sex=male"), col(enc, "sex=female"), col(enc, "site=back"), col(enc, "site=face")]].sum() == 0
    t = enc.transform_table(table_with({"age": ["1"], "sex": ["x"], "site": ["y"]}))
    assert t[0, col(enc, "sex=unknown")] == 1 and t[0, col(enc, "site=unknown")] == 1
    # exactly one hot per categorical field
    assert x[0, 2:].sum() == 2


@pytest.mark.parametrize("missing", [None, "", "nan", float("nan"), "unknown", "NA", "__absent__"])
def test_missing_age_is_zero_with_indicator(missing):
    enc = MetadataEncoder.fit(table_with({"age": ["40", None, "60"], "sex": ["male"] * 3, "site": ["back"] * 3}), META)
    assert enc.to_dict()["numeric"][0]["mean"] == pytest.approx(50.0)  # the missing training age is ignored
    row = {"sex": "male"} if missing == "__absent__" else {"age": missing, "sex": "male"}
    x = enc.transform_rows([row, {"age": 60}])
    assert x[0, col(enc, "age")] == 0.0 and x[0, col(enc, "age_missing")] == 1.0
    assert x[1, col(enc, "age")] == pytest.approx(1.0) and x[1, col(enc, "age_missing")] == 0.0
    assert np.isfinite(x).all()


def test_missing_rows_and_fields_are_allowed():
    enc = MetadataEncoder.fit(table_with({"age": ["40", "60"], "sex": ["male", "female"], "site": ["back", "face"]}), META)
    x = enc.transform_rows([None, {}, {"SEX": "Female"}])  # keys and values match case-insensitively
    np.testing.assert_array_equal(x[0], enc.missing_vector())
    np.testing.assert_array_equal(x[0], x[1])
    assert x[2, col(enc, "sex=female")] == 1
    assert x.dtype == np.float32 and x.shape == (3, enc.dim)


def test_table_and_rows_encode_identically():
    meta = {"age": ["40", None, "71.5", "33"], "sex": ["male", "female", None, "alien"], "site": ["back", "", "face", "trunk"]}
    table = table_with(meta)
    enc = MetadataEncoder.fit(table.subset([0, 1, 2]), META)
    rows = [table[i].metadata for i in range(len(table))]
    np.testing.assert_array_equal(enc.transform_table(table), enc.transform_rows(rows))


def test_not_a_number_names_field_and_row():
    enc = MetadataEncoder.fit(table_with({"age": ["40", "60"], "sex": ["m", "f"], "site": ["a", "b"]}), META)
    with pytest.raises(MetadataError, match=r"row 2 \(id r1\).*'age'.*'forty'"):
        enc.transform_table(table_with({"age": ["1", "forty"], "sex": ["m", "f"], "site": ["a", "b"]}))
    with pytest.raises(MetadataError, match="'age'"):
        enc.transform_rows([{"age": "old"}])


def test_fit_requires_the_configured_columns():
    with pytest.raises(MetadataError, match="column 'site' is not in the dataset's metadata"):
        MetadataEncoder.fit(table_with({"age": ["1"], "sex": ["m"]}), META)


def test_absent_column_at_transform_time_is_missing():
    enc = MetadataEncoder.fit(table_with({"age": ["40", "60"], "sex": ["m", "f"], "site": ["a", "b"]}), META)
    x = enc.transform_table(table_with({"age": ["50"], "sex": ["m"]}))
    assert x[0, col(enc, "site=unknown")] == 1


def test_round_trip_through_json():
    enc = MetadataEncoder.fit(table_with({"age": ["40", "60", None], "sex": ["m", "f", "m"], "site": ["a", "b", "c"]}), META)
    back = MetadataEncoder.from_dict(json.loads(json.dumps(enc.to_dict())))
    rows = [{"age": 50, "sex": "f", "site": "zzz"}, {}, {"age": "61"}]
    np.testing.assert_array_equal(enc.transform_rows(rows), back.transform_rows(rows))
    assert back.feature_names == enc.feature_names and back.dim == enc.dim


def test_malformed_dict_is_a_clear_error():
    with pytest.raises(MetadataError, match="malformed"):
        MetadataEncoder.from_dict({"numeric": [{"name": "age"}]})
    d = MetadataEncoder.fit(table_with({"age": ["1", "2"], "sex": ["m", "f"], "site": ["a", "b"]}), META).to_dict()
    d["dim"] = 99
    with pytest.raises(MetadataError, match="dim 99"):
        MetadataEncoder.from_dict(d)


def test_embedding_encoding_gives_index_columns():
    cfg = MetadataConfig(numeric=["age"], categorical=["sex", "site"], encoding="embedding")
    enc = MetadataEncoder.fit(table_with({"age": ["40", "60"], "sex": ["male", "female"], "site": ["back", "face"]}), cfg)
    assert enc.dim == 4 and enc.cardinalities == [3, 3]
    x = enc.transform_rows([{"sex": "male", "site": "ear"}, {"sex": "female", "site": "back"}])
    assert x[:, 2].tolist() == [2.0, 1.0]  # 0 = unknown, 1.. = sorted vocabulary (female, male)
    assert x[:, 3].tolist() == [0.0, 1.0]
    assert enc.architecture()["meta_cardinalities"] == [3, 3]


def test_constant_and_empty_fields_do_not_divide_by_zero():
    enc = MetadataEncoder.fit(table_with({"age": ["5", "5"], "sex": [None, None], "site": ["a", "a"]}), META)
    x = enc.transform_rows([{"age": 7, "sex": "f"}])
    assert np.isfinite(x).all() and x[0, col(enc, "age")] == pytest.approx(2.0)
    assert enc.feature_names[2:3] == ["sex=unknown"]


def test_overlapping_numeric_and_categorical_is_refused():
    with pytest.raises(ValueError, match="more than once"):
        MetadataEncoder.fit(table_with({"age": ["1"]}), MetadataConfig(numeric=["age"], categorical=["age"]))


def test_real_ham10000_metadata(ham_dir):
    cfg = CsvData(path=str(ham_dir / "subset100_metadata.csv"), label_column="dx", group_column="lesion_id",
                  metadata=MetadataConfig(numeric=["age"], categorical=["sex", "localization"]))
    table = read_dataset(cfg)
    s = split_indices(table, "group", 0.2, 0.2, seed=0)
    enc = MetadataEncoder.fit(table.subset(s.train), cfg.metadata)
    ages = pd.to_numeric(table.subset(s.train).metadata["age"], errors="coerce")
    assert enc.to_dict()["numeric"][0]["mean"] == pytest.approx(ages.mean())
    vocab = enc.to_dict()["categorical"][1]["vocabulary"]
    assert "unknown" not in vocab and "back" in vocab  # the literal 'unknown' site is the unknown bucket
    x = enc.transform_table(table)
    assert x.shape == (100, enc.dim) and np.isfinite(x).all()
    onehot = x[:, 2:]
    assert (onehot.sum(axis=1) == 2).all()  # one sex and one site per row


def test_metadata_rows_for_predict_cli(tmp_path):
    from medlens.data.metadata import metadata_rows_for

    imgs = [str(tmp_path / "a.png"), "other/b.png", "c.png"]
    assert metadata_rows_for('{"age": 63}', imgs) == [{"age": 63}] * 3
    assert metadata_rows_for('[{"age": 1}, null, {}]', imgs) == [{"age": 1}, None, {}]
    with pytest.raises(MetadataError, match="2 metadata objects for 3 images"):
        metadata_rows_for('[{}, {}]', imgs)
    with pytest.raises(MetadataError, match="not valid JSON"):
        metadata_rows_for("{age: 1}", imgs)
    f = tmp_path / "meta.csv"
    f.write_text(f"image,age,sex\n{imgs[0]},63,F\nb.png,,M\n")
    assert metadata_rows_for(str(f), imgs) == [{"age": "63", "sex": "F"}, {"age": None, "sex": "M"}, None]
    with pytest.raises(FileNotFoundError, match="neither JSON nor"):
        metadata_rows_for(str(tmp_path / "nope.csv"), imgs)
