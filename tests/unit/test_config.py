"""Config loading: every shipped YAML, typos, overrides, environment, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medlens.config import ConfigError, RunConfig, apply_overrides, config_from_dict, dump_config, load_config

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "configs").rglob("*.yaml")) + sorted((ROOT / "configs").rglob("*.yml"))


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's MEDLENS__* variables must not change what these tests see."""
    import os

    for k in list(os.environ):
        if k.startswith("MEDLENS__"):
            monkeypatch.delenv(k)


def _write(tmp_path: Path, raw: dict, name: str = "run.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return p


def _minimal() -> dict:
    return {"data": {"kind": "synthetic", "num_samples": 20, "image_size": 28}}


def test_configs_folder_is_not_empty() -> None:
    assert SHIPPED, f"no YAML configs under {ROOT / 'configs'}"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert cfg.output.name or cfg.name
    # the resolved config survives a dump/load round trip unchanged
    again = config_from_dict(yaml.safe_load(dump_config(cfg)), source=str(path))
    assert again == cfg


def _readme_configs() -> list[str]:
    import re

    text = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))])
    return [b for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S) if re.search(r"^data:", b, flags=re.M)]


def test_readme_config_examples_are_valid() -> None:
    """Every full config shown in README.md and docs/ validates: a documented key that does not exist is a bug."""
    blocks = _readme_configs()
    assert len(blocks) >= 2
    for block in blocks:
        config_from_dict(yaml.safe_load(block), source="README.md")


def test_typo_key_names_key_and_file(tmp_path: Path) -> None:
    raw = _minimal() | {"optim": {"lrr": 0.1}}
    p = _write(tmp_path, raw, "typo.yaml")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    msg = str(ei.value)
    assert "optim.lrr" in msg
    assert str(p) in msg
    assert "\n" not in msg


def test_typo_inside_data_section_names_key_without_union_tag(tmp_path: Path) -> None:
    p = _write(tmp_path, {"data": {"kind": "synthetic", "num_sampels": 10}})
    with pytest.raises(ConfigError, match=r"unknown key 'data\.num_sampels'") as ei:
        load_config(p)
    assert "synthetic" not in str(ei.value).split("unknown key")[1]


def test_unknown_section_is_an_error(tmp_path: Path) -> None:
    p = _write(tmp_path, _minimal() | {"optimiser": {"lr": 1e-3}})
    with pytest.raises(ConfigError, match="unknown key 'optimiser'"):
        load_config(p)


def test_bad_value_names_field(tmp_path: Path) -> None:
    p = _write(tmp_path, _minimal() | {"optim": {"lr": -1}})
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        load_config(p)


def test_unknown_data_kind_is_an_error(tmp_path: Path) -> None:
    p = _write(tmp_path, {"data": {"kind": "tiff_stack", "root": "x"}})
    with pytest.raises(ConfigError, match="tiff_stack"):
        load_config(p)


def test_missing_file_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(notmap)


@pytest.mark.parametrize(
    ("override", "getter", "expected"),
    [
        ("optim.lr=3e-4", lambda c: c.optim.lr, 3e-4),
        ("optim.lr=0.01", lambda c: c.optim.lr, 0.01),
        ("trainer.max_epochs=7", lambda c: c.trainer.max_epochs, 7),
        ("trainer.deterministic=false", lambda c: c.trainer.deterministic, False),
        ("optim.milestones=[3, 5]", lambda c: c.optim.milestones, [3, 5]),
        ("data.label_names=[a, b]", lambda c: c.data.label_names, ["a", "b"]),
        ("model.backbone=resnet10t", lambda c: c.model.backbone, "resnet10t"),
        ("output.name=inf", lambda c: c.output.name, "inf"),
        ("output.name=1e5", lambda c: c.output.name, "1e5"),
        ("output.name=2024", lambda c: c.output.name, "2024"),
        ("data.split.seed=3", lambda c: c.data.split.seed, 3),
    ],
)
def test_set_overrides(tmp_path: Path, override: str, getter, expected) -> None:
    cfg = load_config(_write(tmp_path, _minimal()), [override])
    got = getter(cfg)
    assert got == expected
    assert type(got) is type(expected)


def test_override_creates_missing_section(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, _minimal()), ["optim.weight_decay=0.05"])
    assert cfg.optim.weight_decay == 0.05


def test_override_typo_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'optim.lrate'"):
        load_config(_write(tmp_path, _minimal()), ["optim.lrate=1e-3"])


@pytest.mark.parametrize("bad", ["optim.lr", "=3", "optim.lr.x=3"])
def test_malformed_override(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError):
        load_config(_write(tmp_path, _minimal()), [bad])


def test_apply_overrides_does_not_mutate_input() -> None:
    raw = {"optim": {"lr": 1.0}}
    out = apply_overrides(raw, ["optim.lr=2"])
    assert raw == {"optim": {"lr": 1.0}}
    assert out["optim"]["lr"] == 2


def test_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = _write(tmp_path, _minimal() | {"optim": {"lr": 0.1}})
    monkeypatch.setenv("MEDLENS__OPTIM__LR", "3e-4")
    monkeypatch.setenv("MEDLENS__DATA__SPLIT__SEED", "9")
    cfg = load_config(p)
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.data.split.seed == 9
    # --set wins over the environment
    assert load_config(p, ["optim.lr=5e-3"]).optim.lr == pytest.approx(5e-3)


def test_env_override_typo_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDLENS__OPTIM__LRR", "1")
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_config(_write(tmp_path, _minimal()))


def test_other_medlens_env_vars_are_not_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDLENS_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MEDLENS_DEBUG", "1")
    load_config(_write(tmp_path, _minimal()))


def test_relative_data_path_resolved_against_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "labels.csv").write_text("path,label\n")
    p = _write(tmp_path / "cfgs", {"data": {"kind": "csv", "path": "../data/labels.csv", "label_column": "label"}})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(p)
    assert Path(cfg.data.path) == (tmp_path / "data" / "labels.csv").resolve()
    assert cfg.output.name == "run"  # the file stem by default
    # a --set path typed relative to the working folder is made absolute too (the saved config must not
    # depend on where the run was started)
    (elsewhere / "other.csv").write_text("path,label\n")
    cfg = load_config(p, ["data.path=other.csv"])
    assert Path(cfg.data.path) == (elsewhere / "other.csv").resolve()


def test_mean_std_must_match_channels(tmp_path: Path) -> None:
    raw = {"data": {"kind": "synthetic", "channels": 1, "mean": [0.1, 0.2, 0.3]}}
    with pytest.raises(ConfigError, match="data.mean"):
        load_config(_write(tmp_path, raw))


def test_dump_round_trip_with_overrides(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, _minimal()), ["optim.lr=3e-4", "trainer.limit_train_batches=2", "trainer.devices=[0]"])
    text = dump_config(cfg)
    again = config_from_dict(yaml.safe_load(text))
    assert again == cfg
    assert again.optim.lr == pytest.approx(3e-4)
    assert again.trainer.limit_train_batches == 2 and isinstance(again.trainer.limit_train_batches, int)


# ------------------------------------------------------------------------------------------------ secrets
SECRET_URL = "postgresql+psycopg://ana:S3cret-pw@db.example.org:5432/imgs?sslmode=require&password=S3cret-q"


def _sql(url: str = SECRET_URL, **extra) -> dict:
    return {"data": {"kind": "sql", "url": url, "dataset": "d", "label_set": "l"}, **extra}


@pytest.mark.parametrize(("url", "expected"), [
    ("postgresql+psycopg://user:pass@host/db", "postgresql+psycopg://user:***@host/db"),
    ("postgresql://user:p@ss:w/rd@host:5432/db", "postgresql://user:***@host:5432/db"),  # unencoded @ and /
    ("mysql://user:p%40ss@host/db?charset=utf8", "mysql://user:***@host/db?charset=utf8"),
    ("postgresql://user@host/db?password=pw&sslmode=require", "postgresql://user@host/db?password=***&sslmode=require"),
    ("postgresql://host/db?sslmode=require&PASSWORD=pw", "postgresql://host/db?sslmode=require&PASSWORD=***"),
    ("host=db user=ana password=pw dbname=x", "host=db user=ana password=*** dbname=x"),  # libpq key=value
    ("see https://u:tok@mlflow.example.org/x", "see https://u:***@mlflow.example.org/x"),
    # nothing to hide: unchanged
    ("sqlite:////data/a@b.db", "sqlite:////data/a@b.db"),
    ("postgresql://user@host/db", "postgresql://user@host/db"),
    ("postgresql://user:@host/db", "postgresql://user:@host/db"),
    ("http://host:5000/path@x", "http://host:5000/path@x"),
    ("file://C:/runs@1", "file://C:/runs@1"),
    ("plain text", "plain text"),
])
def test_redact_url(url: str, expected: str) -> None:
    from medlens.config import redact_url

    assert redact_url(url) == expected


def test_redact_secrets_walks_nested_data_and_keeps_where_secrets_live() -> None:
    from medlens.config import redact_secrets

    raw = {"a": [{"url": "postgresql://u:pw1@h/db"}, ("x", "mysql://u:pw2@h/db")], "token": "pw3", "api_key": None,
           "password_env": "MY_PW", "password_file": "/run/secrets/pw", "n": 3}
    out = redact_secrets(raw)
    assert out == {"a": [{"url": "postgresql://u:***@h/db"}, ("x", "mysql://u:***@h/db")], "token": "***",
                   "api_key": None, "password_env": "MY_PW", "password_file": "/run/secrets/pw", "n": 3}
    assert raw["token"] == "pw3"  # a copy: the input is untouched


def test_dump_config_and_redacted_dump_hold_no_password(tmp_path: Path) -> None:
    cfg = config_from_dict(_sql(tracking={"mlflow_uri": "https://bob:Tr4ck-pw@mlflow.example.org"}))
    assert cfg.data.url == SECRET_URL  # the live config keeps what connecting needs
    dumped = cfg.redacted_dump()
    assert dumped["data"]["url"] == "postgresql+psycopg://ana:***@db.example.org:5432/imgs?sslmode=require&password=***"
    assert dumped["tracking"]["mlflow_uri"] == "https://bob:***@mlflow.example.org"
    text = dump_config(cfg)
    for secret in ("S3cret", "Tr4ck-pw"):
        assert secret not in text and secret not in str(dumped)
    assert {k: v for k, v in dumped.items() if k not in ("data", "tracking")} == {
        k: v for k, v in cfg.model_dump(mode="json").items() if k not in ("data", "tracking")}
    p = tmp_path / "config.yaml"
    p.write_text(text)
    assert load_config(p).data.url.startswith("postgresql+psycopg://ana:***@")  # still a valid config


# ------------------------------------------------------------------------------------------- precision
@pytest.mark.parametrize(("value", "expected"), [(16, "16"), (32, "32"), ("16", "16"), ("bf16", "bf16"), (32.0, "32")])
def test_precision_written_as_a_number_is_accepted(tmp_path: Path, value, expected: str) -> None:
    p = tmp_path / "run.yaml"
    p.write_text(f"data: {{kind: synthetic}}\ntrainer: {{precision: {value}}}\n")  # unquoted: YAML gives an int
    assert load_config(p).trainer.precision == expected
    assert load_config(_write(tmp_path, _minimal()), [f"trainer.precision={value}"]).trainer.precision == expected


@pytest.mark.parametrize("value", [8, 64, True, "fp16"])
def test_other_precisions_are_refused(tmp_path: Path, value) -> None:
    with pytest.raises(ConfigError, match="trainer.precision"):
        config_from_dict({**_minimal(), "trainer": {"precision": value}})
