"""A bad config value is blamed on where it came from: the YAML file and line, the ``--set`` item, the environment
variable or the ``.env`` line, with a close match for a misspelt key or backbone; on the command line one line,
exit 2, and a traceback only with ``--verbose``."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from medlens.cli import app
from medlens.config import ConfigError, config_from_dict, load_config
from medlens.registry import close_matches

YAML = """\
data:
  kind: synthetic
  num_samples: 20
  image_size: 16
  channels: 1
model:
  backbone: resnet10t
trainer:
  max_epochs: 1
"""


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for k in list(os.environ):
        if k.startswith("MEDLENS__"):
            monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)  # no ./.env of the developer's


def _config(tmp_path: Path, text: str = YAML) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def _error(fn) -> str:
    with pytest.raises(ConfigError) as ei:
        fn()
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


def test_yaml_typo_names_file_line_and_the_key_meant(tmp_path):
    p = _config(tmp_path, YAML.replace("  max_epochs: 1", "  max_epoch: 1"))
    msg = _error(lambda: load_config(p))
    assert msg == f"{p}:9: unknown key 'trainer.max_epoch' (did you mean trainer.max_epochs?)"


def test_yaml_bad_value_and_unknown_section_name_their_lines(tmp_path):
    p = _config(tmp_path, YAML.replace("  image_size: 16", "  image_size: 2") + "optimiser:\n  lr: 0.1\n")
    msg = _error(lambda: load_config(p))
    assert f"{p}:4: data.image_size: Input should be greater than or equal to 8" in msg
    assert f"{p}:10: unknown key 'optimiser' (did you mean optim?)" in msg


def test_a_check_across_keys_names_the_key_it_is_about(tmp_path):
    p = _config(tmp_path, YAML.replace("  channels: 1", "  channels: 1\n  color_augment: true"))
    msg = _error(lambda: load_config(p))
    assert msg.startswith(f"{p}:6: data.color_augment: true needs data.channels: 3")


def test_set_typo_is_blamed_on_the_set_item_not_the_file(tmp_path):
    p = _config(tmp_path)
    msg = _error(lambda: load_config(p, ["trainer.max_epoch=3"]))
    assert msg == "--set trainer.max_epoch=3: unknown key 'trainer.max_epoch' (did you mean trainer.max_epochs?)"
    msg = _error(lambda: load_config(p, ["optim.lr=-1"]))
    assert msg.startswith("--set optim.lr=-1: optim.lr: ")
    assert str(p) not in msg


def test_set_value_that_is_not_yaml_and_a_value_used_as_a_section(tmp_path):
    p = _config(tmp_path)
    assert "--set 'data.label_names=[a,': the value '[a,' is not valid YAML" in _error(lambda: load_config(p, ["data.label_names=[a,"]))
    assert _error(lambda: load_config(p, ["model.backbone.x=1"])) == ("--set 'model.backbone.x=1': 'model.backbone' is not "
                                                                     "a section (it holds a value)")
    assert _error(lambda: load_config(p, ["seed.x=1"])).startswith("--set seed.x=1: seed: ")  # the section it made


def test_environment_typo_is_blamed_on_the_variable(tmp_path, monkeypatch):
    p = _config(tmp_path)
    monkeypatch.setenv("MEDLENS__TRAINER__MAX_EPOCH", "3")
    msg = _error(lambda: load_config(p))
    assert msg == ("environment variable MEDLENS__TRAINER__MAX_EPOCH: unknown key 'trainer.max_epoch' "
                   "(did you mean trainer.max_epochs?)")


def test_dotenv_typo_is_blamed_on_the_file_and_line(tmp_path):
    p = _config(tmp_path)
    env = tmp_path / "my.env"
    env.write_text("# settings\nOTHER=1\nMEDLENS__OPTIM__LRR=0.1\n")
    msg = _error(lambda: load_config(p, env_file=env))
    assert msg == f"{env}:3 (MEDLENS__OPTIM__LRR): unknown key 'optim.lrr' (did you mean optim.lr?)"
    (tmp_path / ".env").write_text("MEDLENS__DATA__IMAGE_SIZE=3\n")  # ./.env, read by default
    assert _error(lambda: load_config(p)).startswith(f"{tmp_path / '.env'}:1 (MEDLENS__DATA__IMAGE_SIZE): data.image_size: ")


def test_the_last_source_of_a_value_is_the_one_named(tmp_path, monkeypatch):
    p = _config(tmp_path)
    monkeypatch.setenv("MEDLENS__DATA__IMAGE_SIZE", "3")
    assert _error(lambda: load_config(p)).startswith("environment variable MEDLENS__DATA__IMAGE_SIZE: data.image_size: ")
    # --set beats the environment: its bad value is the one reported, and a good one clears the error
    assert _error(lambda: load_config(p, ["data.image_size=2"])).startswith("--set data.image_size=2: data.image_size: ")
    cfg = load_config(p, ["data.image_size=32"])
    assert cfg.data.image_size == 32
    assert cfg.origin("data.image_size") == "--set data.image_size=32"
    assert cfg.origin("model.backbone") == f"{p}:7"
    assert cfg.where("trainer.max_epochs") == f"{p}:9: "
    assert cfg.origin("optim.lr") is None  # a default, no optim section in the file


def test_origins_do_not_change_what_a_config_equals(tmp_path):
    p = _config(tmp_path)
    cfg = load_config(p)
    assert cfg == config_from_dict(cfg.model_dump())
    assert cfg.model_copy(deep=True).origin("model.backbone") == f"{p}:7"


def test_an_old_key_moved_into_task_options_keeps_its_line(tmp_path):
    p = _config(tmp_path, YAML + "optim:\n  loss: focal\n")
    assert load_config(p).origin("task_options.loss") == f"{p}:11"
    p.write_text(YAML + "optim:\n  loss: focal\ntask_options:\n  loss: bce\n")
    assert _error(lambda: load_config(p)).startswith(f"{p}:11: optim.loss and task_options.loss are the same option")


def test_task_options_typo_names_its_line_and_the_key_meant(tmp_path):
    from medlens.tasks import task_for_config

    p = _config(tmp_path, YAML + "task_options:\n  threshold_methd: f1\n")
    cfg = load_config(p)
    task = task_for_config(cfg)(cfg.data.task or "binary")
    msg = _error(lambda: task.options(cfg))
    assert msg.startswith(f"{p}:11: task_options.threshold_methd: unknown key for task 'classification' "
                          "(did you mean task_options.threshold_method? valid: ")


# ------------------------------------------------------------------------------------------ model names
@pytest.mark.parametrize(("typo", "meant"), [("resnet1", "resnet18"), ("resnt18", "resnet18"), ("resnet5", "resnet50"),
                                             ("densenet12", "densenet121"), ("convnext_tiy", "convnext_tiny"),
                                             ("efficientnet_b", "efficientnet_b0"),
                                             ("vit_bse_patch16_224", "vit_base_patch16_224")])
def test_a_misspelt_backbone_suggests_the_common_name_first(typo, meant):
    import timm

    assert close_matches(typo, timm.list_models(), n=3)[0] == meant


def test_nothing_close_suggests_nothing():
    assert close_matches("zzzzqqq", ["resnet18", "vgg11"]) == []


def test_a_misspelt_backbone_on_the_command_line_is_one_line_naming_its_line(tmp_path):
    p = _config(tmp_path, YAML.replace("resnet10t", "resnet1"))
    r = CliRunner().invoke(app, ["train", str(p)])
    assert r.exit_code == 2, r.output
    assert r.stderr.strip().startswith(f"error: {p}:7: model.backbone: 'resnet1' is not a timm model (did you mean resnet18, ")
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stdout == ""
    r = CliRunner().invoke(app, ["train", str(p), "--set", "model.backbone=resnt18"])
    assert r.exit_code == 2
    assert r.stderr.startswith("error: --set model.backbone=resnt18: model.backbone: 'resnt18' is not a timm model (did you mean resnet18")


def test_a_config_error_on_the_command_line_is_one_line_and_exit_2_and_verbose_shows_the_traceback(tmp_path):
    p = _config(tmp_path, YAML.replace("  max_epochs: 1", "  max_epoch: 1"))
    r = CliRunner().invoke(app, ["train", str(p)])
    assert r.exit_code == 2
    assert r.stderr == f"error: {p}:9: unknown key 'trainer.max_epoch' (did you mean trainer.max_epochs?)\n"
    r = CliRunner().invoke(app, ["train", str(p), "--verbose"])
    assert r.exit_code != 0
    assert isinstance(r.exception, ConfigError)  # raised again: the runner (and a terminal) shows its traceback
