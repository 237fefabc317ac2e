"""Target ranges (one rule) and the .env layer of config precedence."""

from __future__ import annotations

import pytest
import yaml

from medlens.config import ConfigError, config_from_dict, load_config
from medlens.targets import check_targets, format_target_checks


def test_targets_accept_ranges_and_bounds_and_print_met_lines() -> None:
    cfg = config_from_dict({"data": {"kind": "synthetic"}, "targets": {"auroc_macro": [0.86, 0.92], "f1_macro": {"min": 0.7},
                                                                       "ece": 0.05, "accuracy": {"max": 0.99}}})
    from medlens.tasks import get_task

    # the task says which metrics are lower-is-better (ece)
    lines = format_target_checks({"auroc_macro": 0.88, "f1_macro": 0.65, "ece": 0.03, "accuracy": 0.995}, cfg.targets, get_task("binary"))
    assert lines == [
        "target auroc_macro 0.8800 in 0.86-0.92: MET",
        "target f1_macro 0.6500 >= 0.7: NOT MET",
        "target ece 0.0300 <= 0.05: MET",
        "target accuracy 0.9950 <= 0.99: NOT MET",
    ]
    assert format_target_checks({"auroc_macro": 0.95}, {"auroc_macro": [0.86, 0.92]}) == ["target auroc_macro 0.9500 in 0.86-0.92: NOT MET"]
    rows = check_targets({"auroc_macro": [0.86, 0.92]}, {"auroc_macro": 0.9}, {"headline": {"auroc_macro": {"low": 0.85, "high": 0.93}}})
    assert rows[0]["met"] is True and rows[0]["met_at_ci_bound"] is False and rows[0]["direction"] == "in"
    with pytest.raises(ConfigError, match="min 0.9 > max 0.8"):
        config_from_dict({"data": {"kind": "synthetic"}, "targets": {"auroc_macro": [0.9, 0.8]}})


def test_precedence_defaults_yaml_dotenv_environment_set(tmp_path, monkeypatch) -> None:
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump({"data": {"kind": "synthetic"}, "optim": {"lr": 0.1, "weight_decay": 0.2, "momentum": 0.3},
                                        "seed": 5}))
    env = tmp_path / "my.env"
    env.write_text("MEDLENS__OPTIM__LR=0.01\nMEDLENS__OPTIM__WEIGHT_DECAY=0.02\nMEDLENS__OPTIM__MOMENTUM=0.03\nOTHER=x\n")
    monkeypatch.setenv("MEDLENS__OPTIM__WEIGHT_DECAY", "0.002")
    monkeypatch.setenv("MEDLENS__OPTIM__MOMENTUM", "0.003")
    cfg = load_config(cfg_file, ["optim.momentum=0.0004"], env_file=env)
    assert cfg.optim.lr == 0.01  # .env beats YAML
    assert cfg.optim.weight_decay == 0.002  # environment beats .env
    assert cfg.optim.momentum == 0.0004  # --set beats everything
    assert cfg.seed == 5 and cfg.trainer.max_epochs == 10  # YAML beats defaults; defaults fill the rest
    # ./.env is read by default
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("MEDLENS__TRAINER__MAX_EPOCHS=3\n")
    assert load_config(cfg_file).trainer.max_epochs == 3
    with pytest.raises(ConfigError, match="env file not found"):
        load_config(cfg_file, env_file=tmp_path / "missing.env")
