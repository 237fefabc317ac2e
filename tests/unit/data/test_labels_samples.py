"""Label space, target encoding (unknown = NaN) and the SampleTable column store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medlens.data.labels import LabelError, LabelSpace, encode_multi, encode_single, one_hot, targets_mask
from medlens.data.samples import Sample, SampleTable


def test_label_space_rules() -> None:
    assert LabelSpace(("normal", "pneumonia"), "binary").num_outputs == 1
    assert LabelSpace(("normal", "pneumonia"), "binary").metric_names == ("pneumonia",)
    assert LabelSpace(("a", "b", "c"), "multilabel").num_outputs == 3
    with pytest.raises(LabelError, match="exactly 2"):
        LabelSpace(("a", "b", "c"), "binary")
    with pytest.raises(LabelError, match="duplicate"):
        LabelSpace(("a", "a"), "multiclass")
    with pytest.raises(LabelError, match="empty"):
        LabelSpace((), "multiclass")
    s = LabelSpace(("a", "b"), "binary")
    assert LabelSpace.from_dict(s.to_dict()) == s
    with pytest.raises(LabelError, match="'z'"):
        s.index("z")


def test_encode_single() -> None:
    s = LabelSpace(("a", "b", "c"), "multiclass")
    np.testing.assert_array_equal(encode_single("b", s), [0, 1, 0])
    for unknown in (None, "", float("nan")):
        assert np.isnan(encode_single(unknown, s)).all()
    with pytest.raises(LabelError, match="row 7: unknown label 'd'"):
        encode_single("d", s, "row 7: ")
    assert one_hot(None, 2).dtype == np.float32


def test_encode_multi_unknown_is_nan_unless_negative_asked() -> None:
    s = LabelSpace(("Effusion", "Mass", "Nodule"), "multilabel")
    np.testing.assert_array_equal(encode_multi(["Mass"], s), [0, 1, 0])
    assert np.isnan(encode_multi(None, s)).all()
    v = encode_multi(["Mass"], s, known=["Mass", "Nodule"])  # Effusion was not annotated by this source
    assert np.isnan(v[0]) and v[1] == 1 and v[2] == 0
    np.testing.assert_array_equal(encode_multi(None, s, unknown_labels="negative"), [0, 0, 0])
    with pytest.raises(LabelError, match="'Edema'"):
        encode_multi(["Edema"], s)
    np.testing.assert_array_equal(targets_mask(v[None]), [[False, True, True]])


def _table(n: int = 6) -> SampleTable:
    s = LabelSpace(("a", "b"), "binary")
    t = np.eye(2, dtype=np.float32)[np.arange(n) % 2]
    t[0] = np.nan
    meta = pd.DataFrame({"age": np.arange(n) * 10, "sex": ["F", "M"] * (n // 2)})
    return SampleTable(s, [f"id{i}" for i in range(n)], [f"{i}.png" for i in range(n)], t, [f"p{i // 2}" for i in range(n)],
                       ["train"] * (n - 2) + ["test"] * 2, meta, source="unit")


def test_sample_table_rows_and_subset_do_not_mutate() -> None:
    t = _table()
    s = t[3]
    assert isinstance(s, Sample)
    assert (s.id, s.image, s.group, s.split, s.metadata) == ("id3", "3.png", "p1", "train", {"age": 30, "sex": "M"})
    np.testing.assert_array_equal(s.targets, [0, 1])
    sub = t.subset([5, 1])
    assert sub.ids.tolist() == ["id5", "id1"] and sub.metadata["age"].tolist() == [50, 10]
    sub.targets[:] = 7
    assert not (t.targets == 7).any()
    assert len(t) == 6 and t.class_index().tolist() == [-1, 1, 0, 1, 0, 1]
    assert t.label_counts() == {"a": {"positive": 2, "negative": 3, "unknown": 1}, "b": {"positive": 3, "negative": 2, "unknown": 1}}
    assert t.summary()["num_groups"] == 3


def test_sample_table_in_memory_images() -> None:
    s = LabelSpace(("a", "b"), "binary")
    imgs = np.zeros((4, 8, 8), np.uint8)
    t = SampleTable(s, list("wxyz"), imgs, np.eye(2, dtype=np.float32)[[0, 1, 0, 1]])
    assert t.in_memory and t.subset([1, 2]).images.shape == (2, 8, 8)


def test_sample_table_checks_shapes_and_classes() -> None:
    s = LabelSpace(("a", "b"), "binary")
    with pytest.raises(ValueError, match="targets shape"):
        SampleTable(s, ["x"], ["x.png"], np.zeros((1, 3)), source="f.csv")
    with pytest.raises(ValueError, match="groups has 2 rows"):
        SampleTable(s, ["x"], ["x.png"], np.zeros((1, 2)), groups=["g", "h"])
    t = SampleTable(s, ["x", "y"], ["x.png", "y.png"], np.eye(2, dtype=np.float32)[[0, 0]], source="f.csv")
    with pytest.raises(ValueError, match="f.csv: class 'b' has no samples"):
        t.check_nonempty_classes()
