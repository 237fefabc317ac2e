"""Every option does what it says: each leaf key of the config schema acts, is refused, or is listed as metadata.

The key list is generated from the pydantic models of ``medlens.config`` (``RunConfig`` and every nested model,
including each data kind's), so a new key fails :func:`test_every_schema_key_is_accounted_for` until it gets:

* ``EFFECTS[key]``: a check that changing the key from its default changes something observable on a tiny object
  (a loss value, the network, split membership, Trainer arguments, a written file, the operating point, ...);
* ``REFUSED[key]``: ``(overrides, message)``: the task at hand refuses the key with a clear message;
* ``COVERED_BY[key]``: the test elsewhere that proves the key's effect (reader options that need their own file
  formats, trackers, resume); the test must exist and name the key;
* ``INERT[key]``: a justification, for pure metadata (and even those are checked where it is cheap).

Data keys shared by every source are ``data.<key>``; a key of one data kind is ``data(<kind>).<key>``.
"""

from __future__ import annotations

import ast
import typing
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pydantic import BaseModel

from medlens.config import RunConfig, config_from_dict

ROOT = Path(__file__).resolve().parents[2]
SIZE = 16


# --------------------------------------------------------------------------------------------- the schema
def _models(annotation) -> list[type[BaseModel]]:
    out = [a for arg in typing.get_args(annotation) for a in _models(arg)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        out.append(annotation)
    return out


def schema_keys(model: type[BaseModel] = RunConfig, prefix: str = "") -> set[str]:
    """Every leaf key, recursively through nested models and the data union (one entry per data-kind key)."""
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        models = _models(field.annotation)
        if not models:
            keys.add(prefix + name)
            continue
        if len(models) > 1:  # the data union: shared keys once, a kind's own keys as data(<kind>).<key>
            shared = set.intersection(*(set(m.model_fields) for m in models))
            for m in models:
                kind = m.model_fields["kind"].default
                for k in schema_keys(m, prefix + name + "."):
                    leaf = k[len(prefix + name) + 1 :].split(".")[0]
                    keys.add(k if leaf in shared else f"{prefix}{name}({kind}).{k[len(prefix + name) + 1:]}")
        else:
            keys |= schema_keys(models[0], prefix + name + ".")
    return keys


# --------------------------------------------------------------------------------------------- tiny objects
def base(tmp: Path | None = None) -> dict:
    return {
        "seed": 0,
        "data": {"kind": "synthetic", "num_samples": 64, "image_size": SIZE, "channels": 1, "batch_size": 16, "augment": "none"},
        "model": {"backbone": "resnet10t", "small_input": False},
        "trainer": {"max_epochs": 2, "progress_bar": False, "channels_last": False},  # pinned: `auto` is timed
        "output": {"dir": str(tmp or Path("/nonexistent")), "name": "t", "overwrite": True},
    }


def make(*overrides: str, raw: dict | None = None) -> RunConfig:
    return config_from_dict(raw or base(), overrides=list(overrides))


def table_of(cfg: RunConfig):
    from medlens.tasks import read_table

    return read_table(cfg)


def splits_of(cfg: RunConfig) -> dict[str, list[int]]:
    from medlens.training import prepare_data

    _, s = prepare_data(cfg)
    return {k: sorted(int(i) for i in v) for k, v in s.as_dict().items()}


LOGITS = torch.tensor([[0.3], [-1.2], [2.0], [0.1], [-0.4]])
TARGETS = torch.tensor([[1.0], [0.0], [1.0], [0.0], [1.0]])


def loss_of(cfg: RunConfig) -> float:
    from medlens.data.transforms import preprocessing_from_config
    from medlens.tasks import task_of

    t = table_of(cfg)
    loss = task_of(t).create_loss(cfg, t, preprocessing_from_config(cfg.data))
    return float(loss(LOGITS, TARGETS, torch.ones_like(TARGETS, dtype=torch.bool)))


def arch_of(cfg: RunConfig) -> dict:
    from medlens.tasks import get_task

    return get_task(cfg.data.task or "binary").architecture(cfg, table_of(cfg).label_space)


def net_of(cfg: RunConfig) -> str:
    from medlens.models import create_model

    torch.manual_seed(0)
    return repr(create_model(arch_of(cfg)))


def trainer_of(cfg: RunConfig, tmp: Path):
    from medlens.engine.trainer import build_trainer, monitor_for

    return build_trainer(cfg, tmp, monitor_for(cfg, ("auroc_macro", "max")))[0]


def module_of(cfg: RunConfig):
    from medlens.data.transforms import preprocessing_from_config
    from medlens.engine.trainer import monitor_for
    from medlens.models import create_model
    from medlens.tasks import task_of

    t = table_of(cfg)
    task = task_of(t)
    torch.manual_seed(0)
    model = create_model(task.architecture(cfg, t.label_space))
    pp = preprocessing_from_config(cfg.data)
    m = task.create_module(cfg, model, t.label_space, task.create_loss(cfg, t, pp), pp, monitor_for(cfg, task.default_monitor()))
    m._trainer = SimpleNamespace(estimated_stepping_batches=100, max_epochs=10)  # what the cosine schedule asks
    return m


def optim_of(cfg: RunConfig) -> tuple:
    conf = module_of(cfg).configure_optimizers()
    opt = conf["optimizer"] if isinstance(conf, dict) else conf
    groups = [(round(g["lr"], 12), g["weight_decay"], g.get("momentum")) for g in opt.param_groups]
    out: tuple = (type(opt).__name__, tuple(groups))
    if isinstance(conf, dict):
        s = conf["lr_scheduler"]["scheduler"]
        lrs = []
        for _ in range(12):
            lrs.append(round(opt.param_groups[-1]["lr"], 12))
            opt.step()
            s.step(0.0) if isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau) else s.step()
        out += (type(s).__name__, tuple(lrs))
    return out


def batch_images(cfg: RunConfig, split: str = "train") -> np.ndarray:
    from medlens.training import build_datasets, prepare_data

    t, s = prepare_data(cfg)
    torch.manual_seed(0)
    _, sets, _ = build_datasets(cfg, t, s)
    return np.stack([sets[split][i]["image"] for i in range(4)])


def loaders_of(cfg: RunConfig, tmp: Path):
    """The loaders training builds (through ``train`` up to the fit, with ``fit`` replaced)."""
    import medlens.engine.fit as fit_mod

    seen = {}

    def fake_fit(cfg, module, train_loader, val_loader, *a, **k):
        seen.update(train=train_loader, val=val_loader, module=module)
        raise _Stop

    orig = fit_mod.fit
    fit_mod.fit = fake_fit
    try:
        from medlens.training import train

        with pytest.raises(_Stop):
            train(cfg)
    finally:
        fit_mod.fit = orig
    return seen


class _Stop(Exception):
    pass


def differs(probe: Callable[[RunConfig], object], *overrides: str, default: tuple[str, ...] = ()) -> None:
    a, b = probe(make(*default)), probe(make(*default, *overrides))
    assert not _same(a, b), f"{overrides} changed nothing: {a!r}"


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a == b


def refused(message: str, *overrides: str, raw: dict | None = None, stage: str = "check") -> None:
    """The key is refused for the task at hand: at validation, by the task's check_config or by the loss."""
    from medlens.config import ConfigError
    from medlens.tasks import task_of

    with pytest.raises((ValueError, ConfigError)) as e:
        cfg = make(*overrides, raw=raw)
        t = table_of(cfg)
        task_of(t).validate_config(cfg)
        if stage == "loss":
            loss_of(cfg)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


# --------------------------------------------------------------------------------------------- effects
def _fusion_cfg(*overrides: str) -> RunConfig:
    raw = base()
    raw["data"] = {"kind": "csv", "path": "x.csv"}
    return make(*overrides, raw=raw)


def _meta_probe(tmp: Path, key: str, value: str):
    """Fit the metadata encoder on a tiny table: its dimension or the fused network changes with the key."""
    from medlens.data.labels import LabelSpace
    from medlens.data.metadata import MetadataEncoder
    from medlens.data.samples import SampleTable
    from medlens.tasks import get_task

    n = 8
    meta = [{"age": float(20 + i), "sex": "mf"[i % 2]} for i in range(n)]
    import pandas as pd

    table = SampleTable(LabelSpace(("a", "b"), "binary"), [str(i) for i in range(n)], np.zeros((n, SIZE, SIZE), np.uint8),
                        np.eye(2, dtype=np.float32)[np.arange(n) % 2], None, None, pd.DataFrame(meta), source="t")

    def probe(*ov):
        cfg = make("data.metadata.numeric=[age]", "data.metadata.categorical=[sex]", *ov)
        enc = MetadataEncoder.fit(table, cfg.data.metadata)
        from medlens.models import create_model

        arch = get_task("binary").architecture(cfg, table.label_space, enc)
        torch.manual_seed(0)
        return (enc.dim, repr(create_model(arch)), enc.transform_table(table).tolist())

    return probe


def _metadata_effect(key: str, value: str):
    def check(tmp: Path) -> None:
        probe = _meta_probe(tmp, key, value)
        assert probe() != probe(f"data.metadata.{key}={value}")
    return check


def _anomaly_raw() -> dict:
    raw = base()
    raw["data"].update(task="anomaly")
    raw["task_options"] = {"normal_label": "negative", "ae_depth": 2, "ae_width": 4, "latent_dim": 8}
    return raw


def _anomaly(*overrides: str) -> RunConfig:
    return make(*overrides, raw=_anomaly_raw())


def _anomaly_effect(probe: Callable[[RunConfig], object], *overrides: str) -> Callable[[Path], None]:
    def check(tmp: Path) -> None:
        a, b = probe(_anomaly()), probe(_anomaly(*overrides))
        assert a != b, f"{overrides} changed nothing for task: anomaly"
    return check


def _recon_loss(cfg: RunConfig) -> float:
    """The anomaly task's reconstruction loss of one fixed pair (MSE alone vs MSE + SSIM differ)."""
    from medlens.data.transforms import preprocessing_from_config
    from medlens.tasks import get_task

    loss = get_task("anomaly").create_loss(cfg, None, preprocessing_from_config(cfg.data))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, SIZE, SIZE, generator=g)
    return float(loss(x, torch.rand(2, 1, SIZE, SIZE, generator=g)).mean())


def _score_spec(cfg: RunConfig) -> dict:
    from medlens.data.transforms import preprocessing_from_config
    from medlens.tasks import get_task
    from medlens.tasks.anomaly import score_spec_for

    return score_spec_for(cfg, get_task("anomaly").options(cfg), preprocessing_from_config(cfg.data)).to_dict()


def _operating_point(cfg: RunConfig) -> tuple:
    """The task's operating point on fixed validation logits (thresholds, temperature)."""
    from medlens.bundle import Manifest
    from medlens.data.transforms import preprocessing_from_config
    from medlens.tasks import task_of

    t = table_of(cfg)
    task = task_of(t)
    rng = np.random.default_rng(0)
    raw = (t.targets[:, 1:2] * 1.5 + rng.normal(0, 1.5, (len(t), 1))).astype(np.float32)
    man = Manifest({}, t.label_space, preprocessing_from_config(cfg.data))
    import medlens.tasks.anomaly.explain as anomaly

    orig = anomaly.pixel_error_reference  # the error-map colour scale needs a network; the threshold does not
    anomaly.pixel_error_reference = lambda *a, **k: 1.0
    try:
        task.fit_operating_point(cfg, man, raw, t, None)
    finally:
        anomaly.pixel_error_reference = orig
    return (tuple(round(x, 6) for x in man.thresholds), round(man.temperature, 6))


def _tta(tmp: Path) -> None:
    from medlens.training import train

    seen = []

    class Spy:
        def __init__(self, *a, tta=False, **k):
            seen.append(tta)
            raise _Stop

    import medlens.training as tr

    orig = tr.Predictor
    tr.Predictor = Spy
    try:
        for tta in (False, True):
            cfg = make("trainer.max_epochs=1", "trainer.limit_train_batches=1", f"trainer.tta={tta}", f"output.dir={tmp}")
            with pytest.raises(_Stop):
                train(cfg)
    finally:
        tr.Predictor = orig
    assert seen == [False, True]


def _compile(tmp: Path) -> None:
    import medlens.engine.fit as fit_mod

    compiled = []
    orig = torch.compile
    torch.compile = lambda m, *a, **k: compiled.append(m) or m
    try:
        cfg = make("trainer.compile=true", "trainer.max_epochs=1", "trainer.limit_train_batches=1", f"output.dir={tmp}",
                   "data.num_samples=32")
        from medlens.training import train

        train(cfg)
    finally:
        torch.compile = orig
    assert compiled and fit_mod.COMPILE_PREFIX


def _run_dir(cfg: RunConfig) -> Path:
    from medlens.training import run_dir_for

    return run_dir_for(cfg)


def _manifest_of_tiny_run(tmp: Path, *overrides: str):
    from medlens.bundle import load_bundle
    from medlens.training import train

    cfg = make("trainer.max_epochs=1", "trainer.limit_train_batches=1", "data.num_samples=40", f"output.dir={tmp}", *overrides)
    return load_bundle(train(cfg).bundle_dir).manifest


def _seed(tmp: Path) -> None:
    a = _manifest_of_tiny_run(tmp / "a", "seed=1")
    b = _manifest_of_tiny_run(tmp / "b", "seed=2")
    assert a.history[0]["train/loss"] != b.history[0]["train/loss"]


def _metadata_strings(tmp: Path) -> None:
    m = _manifest_of_tiny_run(tmp, "name=contract_name", "intended_use=only for the contract test", "targets={auroc_macro: 0.5}")
    assert m.intended_use == "only for the contract test"
    assert m.config["name"] == "contract_name" and m.config["targets"] == {"auroc_macro": 0.5}


def _amx() -> bool:
    from medlens.engine.trainer import cpu_has_bf16

    return cpu_has_bf16()


def _trainer_attr(get: Callable[[object], object], *overrides: str) -> Callable[[Path], None]:
    def check(tmp: Path) -> None:
        a, b = get(trainer_of(make(), tmp)), get(trainer_of(make(*overrides), tmp))
        assert a != b, f"{overrides}: {a!r}"
    return check


def _accelerator(cfg: RunConfig, tmp: Path) -> str:
    try:
        return type(trainer_of(cfg, tmp).accelerator).__name__
    except Exception as e:  # noqa: BLE001 - a GPU asked for on a CPU machine is refused by Lightning: also an effect
        return f"refused: {type(e).__name__}"


def _deterministic(cfg: RunConfig, tmp: Path) -> bool:
    before = torch.are_deterministic_algorithms_enabled()
    try:
        trainer_of(cfg, tmp)
        return torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before)


def _callbacks(tr) -> list[str]:
    return sorted(type(c).__name__ for c in tr.callbacks)


def _loader_attr(get: Callable[[dict], object], *overrides: str) -> Callable[[Path], None]:
    def check(tmp: Path) -> None:
        a = get(loaders_of(make(f"output.dir={tmp}/a"), tmp))
        b = get(loaders_of(make(f"output.dir={tmp}/b", *overrides), tmp))
        assert a != b, f"{overrides}: {a!r}"
    return check


def _cache_images(tmp: Path) -> None:
    # an on-disk folder dataset: cached decodes everything up front, uncached reads each time
    import cv2

    from medlens.training import build_datasets

    for c in ("a", "b"):
        (tmp / "f" / c).mkdir(parents=True, exist_ok=True)
        for i in range(6):
            cv2.imwrite(str(tmp / "f" / c / f"{i}.png"), np.full((SIZE, SIZE), 40 * i, np.uint8))
    raw = base()
    raw["data"] = {"kind": "folder", "root": str(tmp / "f"), "image_size": SIZE, "channels": 1, "split": {"val_fraction": 0.3, "test_fraction": 0.0}}
    from medlens.training import prepare_data

    def cached(v):
        cfg = make(f"data.cache_images={v}", raw=raw)
        t, s = prepare_data(cfg)
        return build_datasets(cfg, t, s)[2]

    assert cached("false") is False and cached("true") is True


def _on_bad_image(tmp: Path) -> None:
    (tmp / "f" / "a").mkdir(parents=True)
    (tmp / "f" / "b").mkdir(parents=True)
    import cv2

    for c in ("a", "b"):
        for i in range(3):
            cv2.imwrite(str(tmp / "f" / c / f"{i}.png"), np.zeros((8, 8), np.uint8))
    (tmp / "f" / "a" / "bad.png").write_bytes(b"not an image")
    raw = base()
    raw["data"] = {"kind": "folder", "root": str(tmp / "f"), "image_size": SIZE, "channels": 1, "cache_images": True,
                   "split": {"val_fraction": 0.3, "test_fraction": 0.0}}
    from medlens.training import build_datasets, prepare_data

    cfg = make(raw=raw)
    t, s = prepare_data(cfg)
    with pytest.raises(Exception):  # noqa: B017 - the read error of the configured default
        build_datasets(cfg, t, s)
    cfg = make("data.on_bad_image=skip", raw=raw)
    t, s = prepare_data(cfg)
    _, sets, _ = build_datasets(cfg, t, s)
    assert sum(len(d.skipped) for d in sets.values()) == 1


def _num_workers(tmp: Path) -> None:
    _loader_attr(lambda s: s["train"].num_workers, "data.num_workers=1")(tmp)


def _max_samples(tmp: Path) -> None:
    assert len(table_of(make())) == 64 and len(table_of(make("data.max_samples=20"))) == 20


def _checkpoint(tmp: Path) -> None:
    from medlens.models import create_model
    from medlens.models.classifier import load_backbone_checkpoint

    torch.manual_seed(1)
    src = create_model(arch_of(make()))
    torch.save({k.removeprefix("backbone."): v for k, v in src.state_dict().items() if k.startswith("backbone.")}, tmp / "w.pth")
    torch.manual_seed(2)
    dst = create_model(arch_of(make()))
    before = next(dst.backbone.parameters()).clone()
    load_backbone_checkpoint(dst, str(tmp / "w.pth"))
    assert not torch.equal(before, next(dst.backbone.parameters()))
    assert torch.equal(next(src.backbone.parameters()), next(dst.backbone.parameters()))


def _resume(tmp: Path) -> None:
    from medlens.engine.fit import CheckpointError
    from medlens.training import train

    (tmp / "bad.ckpt").write_bytes(b"x")
    with pytest.raises(CheckpointError):
        train(make(f"output.dir={tmp}", f"trainer.resume={tmp / 'bad.ckpt'}", "trainer.max_epochs=1"))


def _auto_resume(tmp: Path) -> None:
    from medlens.training import train

    ck = tmp / "t" / "checkpoints"
    ck.mkdir(parents=True)
    (ck / "last.ckpt").write_bytes(b"x")  # found by auto_resume only: then read (and refused as corrupt)
    with pytest.raises(ValueError, match="last.ckpt"):
        train(make(f"output.dir={tmp}", "trainer.auto_resume=true", "trainer.max_epochs=1"))


def _overwrite(tmp: Path) -> None:
    run = tmp / "t"
    (run / "bundle").mkdir(parents=True)
    from medlens.training import train

    with pytest.raises(FileExistsError):
        train(make(f"output.dir={tmp}", "output.overwrite=false"))


def _tracking_backends(tmp: Path) -> None:
    from medlens.engine.tracking import build_loggers

    a = [type(x).__name__ for x in build_loggers(make(f"output.dir={tmp}"), tmp / "r", None)]
    b = [type(x).__name__ for x in build_loggers(make(f"output.dir={tmp}", "tracking.backends=[csv, tensorboard]"), tmp / "r2", None)]
    assert a != b


def _csv_table(tmp: Path, **kw):
    """A tiny CSV read with the given reader options."""
    import cv2

    from medlens.config import CsvData
    from medlens.data.readers import read_dataset

    (tmp / "im").mkdir(exist_ok=True)
    for i in range(4):
        cv2.imwrite(str(tmp / "im" / f"{i}.png"), np.full((8, 8), 60 * i, np.uint8))
    (tmp / "t.csv").write_text("path,other,labels,pid,age\n" + "".join(
        f"im/{i}.png,im/{3 - i}.png,{['a;b', 'b', 'a', 'a;b'][i]},p{i // 2},{30 + i}\n" for i in range(4)))
    return read_dataset(CsvData(path=str(tmp / "t.csv"), label_column="labels", label_delimiter=";", **kw))


def _csv_effect(key: str, value) -> Callable[[Path], None]:
    def probe(t) -> str:
        return repr((list(t.images), t.targets.tolist(), t.label_space, None if t.groups is None else list(t.groups),
                     None if t.metadata is None else repr(t.metadata)))

    def check(tmp: Path) -> None:
        a = probe(_csv_table(tmp))
        if key == "label_delimiter":  # the fixture uses ";": the default "|" reads "a;b" as one label
            from medlens.config import CsvData
            from medlens.data.readers import read_dataset

            b = probe(read_dataset(CsvData(path=str(tmp / "t.csv"), label_column="labels")))
        else:
            b = probe(_csv_table(tmp, **{key: value}))
        assert a != b, f"data.{key} changed nothing"
    return check


EFFECTS: dict[str, Callable[[Path], None]] = {
    "data(csv).image_column": _csv_effect("image_column", "other"),
    "data(csv).label_delimiter": _csv_effect("label_delimiter", "|"),
    "data(csv).group_column": _csv_effect("group_column", "pid"),
    "data(csv).metadata_columns": _csv_effect("metadata_columns", ["age"]),
    # ---- run
    "seed": _seed,
    # ---- data: what reaches the network
    "data.image_size": lambda tmp: differs(lambda c: batch_images(c).shape, "data.image_size=24"),
    "data.channels": lambda tmp: differs(lambda c: batch_images(c).shape, "data.channels=3"),
    "data.mean": lambda tmp: differs(batch_images, "data.mean=[0.2]"),
    "data.std": lambda tmp: differs(batch_images, "data.std=[0.1]"),
    "data.augment": lambda tmp: differs(batch_images, "data.augment=strong"),
    "data.color_augment": lambda tmp: differs(lambda c: repr(__import__("medlens.data.transforms", fromlist=["x"]).build_augment(
        c.data.augment, c.data.channels, c.data.color_augment)), "data.color_augment=false", default=("data.augment=light", "data.channels=3")),
    "data.batch_size": _loader_attr(lambda s: s["train"].batch_size, "data.batch_size=8"),
    "data.eval_batch_size": _loader_attr(lambda s: s["val"].batch_size, "data.eval_batch_size=5"),
    "data.num_workers": _num_workers,
    "data.sampler": _loader_attr(lambda s: getattr(s["train"].sampler, "weights", None) is None, "data.sampler=weighted"),
    "data.cache_images": _cache_images,
    "data.on_bad_image": _on_bad_image,
    "data.max_samples": _max_samples,
    "data.label_names": lambda tmp: differs(lambda c: table_of(c).label_space.names, "data.label_names=[healthy, sick]"),
    "data.task": lambda tmp: differs(lambda c: table_of(c).label_space.task, "data.task=multiclass"),
    "task_options(anomaly).normal_label": lambda tmp: differs(lambda c: table_of(c).label_space.names, "task_options.normal_label=positive",
                                             default=("data.task=anomaly", "task_options.normal_label=negative")),
    "data(synthetic).num_samples": lambda tmp: differs(lambda c: len(table_of(c)), "data.num_samples=40"),
    "data(synthetic).num_labels": lambda tmp: differs(lambda c: table_of(c).label_space.names, "data.num_labels=3"),
    "data(synthetic).seed": lambda tmp: differs(lambda c: table_of(c).images.tobytes(), "data.seed=3"),
    # ---- data.split: membership
    "data.split.method": lambda tmp: differs(splits_of, "data.split.method=stratified"),
    "data.split.val_fraction": lambda tmp: differs(splits_of, "data.split.val_fraction=0.3", default=("data.split.method=stratified",)),
    "data.split.test_fraction": lambda tmp: differs(splits_of, "data.split.test_fraction=0.3", default=("data.split.method=stratified",)),
    "data.split.seed": lambda tmp: differs(splits_of, "data.split.seed=5", default=("data.split.method=stratified",)),
    "data.split.folds": lambda tmp: differs(splits_of, "data.split.folds=3", default=("data.split.method=kfold",)),
    "data.split.fold": lambda tmp: differs(splits_of, "data.split.fold=1", default=("data.split.method=kfold",)),
    "data.split.cv_holdout": lambda tmp: differs(splits_of, "data.split.cv_holdout=auto", default=("data.split.method=kfold",)),
    # ---- data.metadata: the encoder and the fused network
    "data.metadata.numeric": _metadata_effect("numeric", "[]"),
    "data.metadata.categorical": _metadata_effect("categorical", "[]"),
    "data.metadata.encoding": _metadata_effect("encoding", "embedding"),
    "data.metadata.hidden": _metadata_effect("hidden", "[8]"),
    "data.metadata.dropout": _metadata_effect("dropout", "0.5"),
    # ---- model: the network
    "model.backbone": lambda tmp: differs(net_of, "model.backbone=resnet14t"),
    "model.small_input": lambda tmp: differs(net_of, "model.small_input=true"),
    "model.drop_rate": lambda tmp: differs(net_of, "model.drop_rate=0.3"),
    "model.drop_path_rate": lambda tmp: differs(net_of, "model.drop_path_rate=0.2"),
    "model.checkpoint": _checkpoint,
    "task_options(anomaly).autoencoder": _anomaly_effect(net_of, "task_options.autoencoder=reversed"),
    "task_options(anomaly).ae_depth": _anomaly_effect(net_of, "task_options.ae_depth=3"),
    "task_options(anomaly).ae_width": _anomaly_effect(net_of, "task_options.ae_width=8"),
    "task_options(anomaly).latent_dim": _anomaly_effect(arch_of, "task_options.latent_dim=16", "task_options.autoencoder=reversed"),
    "task_options(anomaly).ae_skip_levels": _anomaly_effect(net_of, "task_options.ae_skip_levels=[0, 1]"),
    "task_options(anomaly).anomaly_score": _anomaly_effect(_score_spec, "task_options.anomaly_score=percentile"),
    "task_options(anomaly).anomaly_map": _anomaly_effect(_score_spec, "task_options.anomaly_map=ssim"),
    "task_options(anomaly).score_percentile": _anomaly_effect(_score_spec, "task_options.score_percentile=90"),
    "task_options(anomaly).anomaly_fpr": _anomaly_effect(_operating_point, "task_options.anomaly_fpr=0.5"),
    # ---- optim: the loss
    "task_options(classification).loss": lambda tmp: differs(loss_of, "task_options.loss=focal"),
    "task_options(anomaly).loss": _anomaly_effect(_recon_loss, "task_options.loss=mse_ssim"),
    "task_options(classification).focal_gamma": lambda tmp: differs(loss_of, "task_options.focal_gamma=0.5", default=("task_options.loss=focal",)),
    "task_options(classification).focal_alpha": lambda tmp: differs(loss_of, "task_options.focal_alpha=0.9", default=("task_options.loss=focal",)),
    "task_options(classification).class_weights": lambda tmp: differs(loss_of, "task_options.class_weights=[1, 5]"),
    "task_options(classification).pos_weight": lambda tmp: differs(loss_of, "task_options.pos_weight=[4]"),
    "task_options(classification).label_smoothing": lambda tmp: differs(loss_of, "task_options.label_smoothing=0.2"),
    # ---- optim: optimiser and schedule
    "optim.optimizer": lambda tmp: differs(optim_of, "optim.optimizer=sgd"),
    "optim.lr": lambda tmp: differs(optim_of, "optim.lr=0.1"),
    "optim.backbone_lr": lambda tmp: differs(optim_of, "optim.backbone_lr=0.1"),
    "optim.weight_decay": lambda tmp: differs(optim_of, "optim.weight_decay=0.3"),
    "optim.momentum": lambda tmp: differs(optim_of, "optim.momentum=0.5", default=("optim.optimizer=sgd",)),
    "optim.scheduler": lambda tmp: differs(optim_of, "optim.scheduler=multistep"),
    "optim.warmup_epochs": lambda tmp: differs(optim_of, "optim.warmup_epochs=1"),
    "optim.min_lr": lambda tmp: differs(optim_of, "optim.min_lr=0.0009"),
    "optim.milestones": lambda tmp: differs(optim_of, "optim.milestones=[2]", default=("optim.scheduler=multistep", "optim.milestones=[5]")),
    "optim.gamma": lambda tmp: differs(optim_of, "optim.gamma=0.5", default=("optim.scheduler=multistep", "optim.milestones=[2]")),
    "optim.plateau_patience": lambda tmp: differs(optim_of, "optim.plateau_patience=0", default=("optim.scheduler=plateau",)),
    "optim.ema": lambda tmp: differs(lambda c: module_of(c).ema_model is None, "optim.ema=true"),
    "optim.ema_decay": lambda tmp: differs(lambda c: module_of(c).optim.ema_decay, "optim.ema_decay=0.9", default=("optim.ema=true",)),
    "optim.mixup_alpha": lambda tmp: differs(lambda c: module_of(c).optim.mixup_alpha, "optim.mixup_alpha=0.4"),
    "optim.cutmix_alpha": lambda tmp: differs(lambda c: module_of(c).optim.cutmix_alpha, "optim.cutmix_alpha=1.0"),
    "optim.mix_prob": lambda tmp: differs(lambda c: module_of(c).optim.mix_prob, "optim.mix_prob=0.5"),
    "optim.freeze_backbone": _trainer_attr(_callbacks, "optim.freeze_backbone=true"),
    "optim.freeze_epochs": _trainer_attr(lambda t: [c.epochs for c in t.callbacks if hasattr(c, "epochs")], "optim.freeze_epochs=2"),
    "optim.grad_clip": _trainer_attr(lambda t: t.gradient_clip_val, "optim.grad_clip=1.0"),
    "optim.accumulate_grad_batches": _trainer_attr(lambda t: t.accumulate_grad_batches, "optim.accumulate_grad_batches=3"),
    # ---- trainer: Trainer arguments
    "trainer.max_epochs": _trainer_attr(lambda t: t.max_epochs, "trainer.max_epochs=5"),
    "trainer.max_steps": _trainer_attr(lambda t: t.max_steps, "trainer.max_steps=7"),
    "trainer.max_time_s": _trainer_attr(lambda t: repr([getattr(c, "_duration", None) for c in t.callbacks]), "trainer.max_time_s=60"),
    "trainer.limit_train_batches": _trainer_attr(lambda t: t.limit_train_batches, "trainer.limit_train_batches=2"),
    "trainer.val_check_interval": _trainer_attr(lambda t: t.val_check_interval, "trainer.val_check_interval=0.5"),
    # the default (auto) is bf16 on a CPU with AMX units and 32 elsewhere: the override is the other one
    "trainer.precision": lambda tmp: _trainer_attr(lambda t: t.precision, "trainer.precision=" + ("32" if _amx() else "bf16"))(tmp),
    "trainer.accelerator": lambda tmp: differs(lambda c: _accelerator(c, tmp), "trainer.accelerator=cpu" if torch.cuda.is_available() else "trainer.accelerator=gpu"),
    "trainer.devices": _trainer_attr(lambda t: t.num_devices, "trainer.devices=2", "trainer.accelerator=cpu", "trainer.strategy=ddp_spawn"),
    "trainer.strategy": _trainer_attr(lambda t: type(t.strategy).__name__, "trainer.strategy=ddp_spawn", "trainer.accelerator=cpu"),
    "trainer.num_nodes": _trainer_attr(lambda t: t.num_nodes, "trainer.num_nodes=2", "trainer.accelerator=cpu", "trainer.strategy=ddp"),
    "trainer.early_stopping_patience": _trainer_attr(_callbacks, "trainer.early_stopping_patience=2"),
    "trainer.monitor": _trainer_attr(lambda t: t.checkpoint_callback.monitor, "trainer.monitor=val/loss"),
    "trainer.monitor_mode": lambda tmp: differs(lambda c: trainer_of(c, tmp).checkpoint_callback.mode, "trainer.monitor_mode=max",
                                                default=("trainer.monitor=val/loss",)),
    "trainer.deterministic": lambda tmp: differs(lambda c: _deterministic(c, tmp), "trainer.deterministic=false"),
    "trainer.log_every_n_steps": _trainer_attr(lambda t: t.log_every_n_steps, "trainer.log_every_n_steps=3"),
    "trainer.progress_bar": _trainer_attr(_callbacks, "trainer.progress_bar=true"),
    "trainer.channels_last": lambda tmp: differs(lambda c: module_of(c).channels_last, "trainer.channels_last=true"),
    "trainer.compile": _compile,
    "trainer.tta": _tta,
    "trainer.resume": _resume,
    "trainer.auto_resume": _auto_resume,
    # ---- trainer: the operating point fitted on validation
    "task_options(classification).threshold_method": lambda tmp: differs(_operating_point, "task_options.threshold_method=youden"),
    "task_options(classification).fixed_threshold": lambda tmp: differs(_operating_point, "task_options.fixed_threshold=0.3", default=("task_options.threshold_method=fixed",)),
    "task_options(classification).calibrate": lambda tmp: differs(_operating_point, "task_options.calibrate=false"),
    # ---- output and tracking
    "output.dir": lambda tmp: differs(_run_dir, f"output.dir={tmp}"),
    "output.name": lambda tmp: differs(_run_dir, "output.name=other"),
    "output.overwrite": _overwrite,
    "tracking.backends": _tracking_backends,
    # ---- metadata written to the manifest (checked on one tiny run)
    "name": _metadata_strings,
    "intended_use": _metadata_strings,
    "targets.min": _metadata_strings,  # a lower bound (a plain number is the same); ranges: targets.max below
}

#: key -> (overrides on the tiny binary config, or None: the anomaly config), the message of the refusal
REFUSED: dict[str, tuple[tuple[str, ...], str]] = {
    # the wandb package is not a test dependency: the option is proven to be refused where it cannot act
    "tracking.wandb_project": (("tracking.wandb_project=p",), "tracking.wandb_project acts only with 'wandb' in tracking.backends"),
}

#: key -> "tests/...py::test_name": the test that proves the key's effect (it must exist and name the key)
COVERED_BY: dict[str, str] = {
    "ood.method": "tests/integration/test_ood.py::test_ood_options_act_and_are_refused_where_they_cannot",
    "ood.features": "tests/integration/test_ood.py::test_ood_options_act_and_are_refused_where_they_cannot",
    "ood.k": "tests/integration/test_ood.py::test_ood_options_act_and_are_refused_where_they_cannot",
    "ood.val_pass": "tests/integration/test_ood.py::test_ood_options_act_and_are_refused_where_they_cannot",
    "ood.max_train": "tests/integration/test_ood.py::test_ood_options_act_and_are_refused_where_they_cannot",
    "task_options(regression).loss": "tests/integration/test_regression.py::test_regression_options_act",
    "task_options(regression).huber_delta": "tests/integration/test_regression.py::test_regression_options_act",
    "task_options(regression).standardize": "tests/integration/test_regression.py::test_regression_options_act",
    "task_options(regression).interval_level": "tests/integration/test_regression.py::test_regression_options_act",
    "task_options(regression).min_value": "tests/integration/test_regression.py::test_regression_options_act",
    "task_options(regression).max_value": "tests/integration/test_regression.py::test_regression_options_act",
    "trainer.tune_allocator": "tests/unit/engine/test_allocator.py::test_fit_tunes_the_allocator_only_when_the_key_is_on",
    "data(csv).text_column": "tests/integration/test_text_column.py::test_the_text_is_kept_with_its_row_and_never_a_label",
    "data(jsonl).text_column": "tests/integration/test_text_column.py::test_the_text_is_kept_with_its_row_and_never_a_label",
    "data(hf).text_column": "tests/integration/test_text_column.py::test_hugging_face_datasets_carry_a_text_column",
    "data(webdataset).urls.train": "tests/integration/test_webdataset.py::test_train_from_local_shards_through_the_cli",
    "data(webdataset).urls.val": "tests/integration/test_webdataset.py::test_train_from_local_shards_through_the_cli",
    "data(webdataset).urls.test": "tests/integration/test_webdataset.py::test_train_from_local_shards_through_the_cli",
    "data(webdataset).image_ext": "tests/unit/data/test_shards.py::test_image_ext_label_field_metadata_fields_and_timeout_act",
    "data(webdataset).label_member": "tests/unit/data/test_shards.py::test_image_ext_label_field_metadata_fields_and_timeout_act",
    "data(webdataset).label_field": "tests/unit/data/test_shards.py::test_image_ext_label_field_metadata_fields_and_timeout_act",
    "data(webdataset).metadata_fields": "tests/unit/data/test_shards.py::test_image_ext_label_field_metadata_fields_and_timeout_act",
    "data(webdataset).timeout_s": "tests/unit/data/test_shards.py::test_image_ext_label_field_metadata_fields_and_timeout_act",
    "data(webdataset).group_field": "tests/unit/data/test_shards.py::test_reader_indexes_labels_text_and_groups",
    "data(webdataset).text_column": "tests/integration/test_webdataset.py::test_train_from_local_shards_through_the_cli",
    "data(webdataset).shuffle_buffer": "tests/unit/data/test_stream.py::test_the_shuffle_buffer_mixes_samples_across_a_stream",
    "trainer.early_stopping_min_delta": "tests/unit/engine/test_trainer.py::test_early_stopping_min_delta_stops_when_moves_are_smaller",
    "trainer.save_top_k": "tests/unit/engine/test_trainer.py::test_top_k_and_every_n_epoch_checkpoints_are_written",
    "trainer.checkpoint_every_n_epochs": "tests/unit/engine/test_trainer.py::test_top_k_and_every_n_epoch_checkpoints_are_written",
    "data.cache_mb": "tests/unit/data/test_dataset_cache.py::test_cache_mb_caps_the_cached_count_train_first",
    "data.disk_cache": "tests/unit/data/test_diskcache.py::test_training_datasets_use_the_disk_cache_as_configured",
    "data.disk_cache_mb": "tests/unit/data/test_diskcache.py::test_disk_cache_mb_bounds_the_cache_lru_first",
    "data(folder).group_pattern": "tests/unit/data/test_group_pattern.py::test_validation_is_carved_from_train_by_patient",
    "data.unknown_labels": "tests/unit/data/test_sql.py::test_absent_annotation_is_unknown_or_negative_on_request",
    "data.kind": "tests/unit/data/test_readers_core.py::test_core_kinds_are_registered",
    "data(csv).image_root": "tests/unit/data/test_readers_core.py::test_csv_split_column_and_image_root",
    "data(csv).path": "tests/unit/data/test_readers_core.py::test_csv_missing_column_and_file",
    "data(folder).root": "tests/unit/data/test_readers_core.py::test_folder_missing_root",
    "data(hf).path": "tests/unit/data/test_hf.py::test_format_resolution_for_hub_names_and_missing_paths",
    "data(jsonl).image_root": "tests/unit/data/test_jsonl.py::",
    "data(jsonl).path": "tests/unit/data/test_jsonl.py::test_missing_file_is_a_clear_error",
    "data(medmnist).path": "tests/unit/data/test_readers_core.py::test_medmnist_real_file",
    "data(medmnist).root": "tests/unit/data/test_readers_core.py::test_medmnist_download_md5_match_is_renamed_into_place",
    "data(nih).image_root": "tests/unit/data/test_nih.py::",
    "data(nih).path": "tests/unit/data/test_nih.py::test_not_a_data_entry_file",
    "data(sql).image_root": "tests/unit/data/test_sql.py::test_relative_paths_resolve_against_the_stored_image_root",
    "data(csv).label_column": "tests/unit/data/test_readers_core.py::test_csv_single_label_column",
    "data(csv).label_columns": "tests/unit/data/test_readers_core.py::test_csv_one_column_per_label_blank_is_nan",
    "data(csv).no_finding": "tests/unit/data/test_readers_core.py::test_csv_delimited_multilabel_with_no_finding",
    "data(csv).split_column": "tests/unit/data/test_readers_core.py::test_csv_split_column_and_image_root",
    "data(medmnist).flag": "tests/unit/data/test_readers_core.py::test_medmnist_found_by_flag_in_data_dir",
    "data(medmnist).size": "tests/unit/data/test_readers_core.py::test_medmnist_real_file",
    "data(medmnist).download": "tests/unit/data/test_readers_core.py::test_medmnist_download_off_without_file",
    "data(jsonl).image_field": "tests/unit/data/test_jsonl.py::test_configurable_fields_ids_splits_and_metadata",
    "data(jsonl).labels_field": "tests/unit/data/test_jsonl.py::test_configurable_fields_ids_splits_and_metadata",
    "data(jsonl).group_field": "tests/unit/data/test_jsonl.py::test_explicit_group_field_must_exist",
    "data(jsonl).id_field": "tests/unit/data/test_jsonl.py::test_configurable_fields_ids_splits_and_metadata",
    "data(jsonl).split_field": "tests/unit/data/test_jsonl.py::test_configurable_fields_ids_splits_and_metadata",
    "data(jsonl).metadata_fields": "tests/unit/data/test_jsonl.py::test_configurable_fields_ids_splits_and_metadata",
    "data(sql).url": "tests/unit/data/test_sql.py::test_url_from_environment",
    "data(sql).password_env": "tests/unit/data/test_sql.py::test_password_from_env_or_file_never_in_safe_url",
    "data(sql).password_file": "tests/unit/data/test_sql.py::test_password_from_env_or_file_never_in_safe_url",
    "data(sql).dataset": "tests/unit/data/test_sql.py::test_unknown_dataset_and_label_set_list_what_exists",
    "data(sql).label_set": "tests/unit/data/test_sql.py::test_unknown_dataset_and_label_set_list_what_exists",
    "data(sql).label_set_version": "tests/unit/data/test_sql.py::test_label_set_versions_and_label_names",
    "data(sql).chunk_size": "tests/unit/data/test_sql.py::test_small_chunks_stream_the_same_result",
    "data(sql).group_by": "tests/unit/data/test_sql.py::",
    "data(sql).metadata_fields": "tests/unit/data/test_sql.py::test_roundtrip_gives_the_same_samples",
    "data(nih).images": "tests/unit/data/test_nih.py::test_listing_restricts_images_and_missing_listed_image_is_error_or_skip",
    "data(nih).harmonize": "tests/unit/data/test_nih.py::test_rename_and_drop_with_harmonize",
    "data(nih).extra_sources": "tests/unit/data/test_nih.py::test_two_sources_merge_with_unknown_for_missing_labels",
    "data(hf).format": "tests/unit/data/test_hf.py::test_format_resolution_for_hub_names_and_missing_paths",
    "data(hf).image_column": "tests/unit/data/test_hf.py::test_parquet_with_embedded_bytes_multilabel_groups_and_metadata",
    "data(hf).label_column": "tests/unit/data/test_hf.py::test_parquet_with_embedded_bytes_multilabel_groups_and_metadata",
    "data(hf).split_map": "tests/unit/data/test_hf.py::test_arrow_save_to_disk_classlabel_and_split_map",
    "data(hf).group_column": "tests/unit/data/test_hf.py::test_parquet_with_embedded_bytes_multilabel_groups_and_metadata",
    "data(hf).metadata_columns": "tests/unit/data/test_hf.py::test_parquet_with_embedded_bytes_multilabel_groups_and_metadata",
    "data(hf).cache_dir": "tests/unit/data/test_hf.py::test_parquet_with_embedded_bytes_multilabel_groups_and_metadata",
    "data.split.allow_group_leakage": "tests/unit/data/test_splits.py::",
    "model.pretrained": "tests/unit/models/test_pretrained.py::test_true_loads_the_default_tag_from_the_hf_cache_offline",
    "tracking.mlflow_uri": "tests/unit/test_tracking.py::test_mlflow_uri_from_config_wins_over_environment",
    "tracking.experiment": "tests/unit/test_tracking.py::test_training_logs_to_mlflow_tensorboard_and_csv_at_once",
    "data(sql).schema_.annotations.image_id": "tests/unit/data/test_sql_schema_mapping.py::",
    "data(sql).schema_.dataset.table": "tests/unit/data/test_sql_schema_mapping.py::_check_dataset_filter",
    "data(sql).schema_.dataset.image_id": "tests/unit/data/test_sql_schema_mapping.py::_check_dataset_filter",
    "data(sql).schema_.dataset.column": "tests/unit/data/test_sql_schema_mapping.py::_check_dataset_filter",
    "data(sql).schema_.dataset.equals": "tests/unit/data/test_sql_schema_mapping.py::_check_dataset_filter",
    "data.augment_backend": "tests/unit/data/test_augment_backends.py::test_the_config_picks_the_training_split_backend",
    "data(sql).schema_.annotations.label_id": "tests/unit/data/test_sql_schema_mapping.py::",
    "data(sql).schema_.annotations.table": "tests/unit/data/test_sql_schema_mapping.py::",
    "data(sql).schema_.annotations.value": "tests/unit/data/test_sql_schema_mapping.py::",
    "data(sql).schema_.images.group": "tests/unit/data/test_sql_schema_mapping.py::",
    "data(sql).schema_.images.id": "tests/unit/data/test_sql_schema_mapping.py::",
    "data(sql).schema_.images.path": "tests/unit/data/test_sql_schema_mapping.py::",
    "data(sql).schema_.images.split": "tests/unit/data/test_sql_schema_mapping.py::",
    "data(sql).schema_.images.table": "tests/unit/data/test_sql_schema_mapping.py::",
    "data(sql).schema_.label_set_labels.label_id": "tests/unit/data/test_sql_schema_mapping.py::",
    "data(sql).schema_.label_set_labels.label_set_id": "tests/unit/data/test_sql_schema_mapping.py::",
    "data(sql).schema_.label_set_labels.table": "tests/unit/data/test_sql_schema_mapping.py::",
    "data(sql).schema_.label_sets.id": "tests/unit/data/test_sql_schema_mapping.py::",
    "data(sql).schema_.label_sets.name": "tests/unit/data/test_sql_schema_mapping.py::",
    "data(sql).schema_.label_sets.table": "tests/unit/data/test_sql_schema_mapping.py::",
    "data(sql).schema_.label_sets.version": "tests/unit/data/test_sql_schema_mapping.py::",
    "data(sql).schema_.labels.id": "tests/unit/data/test_sql_schema_mapping.py::",
    "data(sql).schema_.labels.name": "tests/unit/data/test_sql_schema_mapping.py::",
    "data(sql).schema_.labels.table": "tests/unit/data/test_sql_schema_mapping.py::",
    "targets.max": "tests/unit/test_targets_dotenv.py::test_targets_accept_ranges_and_bounds_and_print_met_lines",
    "task_options(classification).orientation_check": "tests/unit/test_tta_orientation.py::test_orientation_check_flips_an_inverted_binary_model",
    "task_options(anomaly).detector": "tests/integration/test_patchcore.py::test_patchcore_options_are_checked",
    "task_options(anomaly).memory_size": "tests/integration/test_patchcore.py::test_distance_is_zero_on_memorised_patches_and_coreset_bounds_memory",
    "task_options(anomaly).coreset_candidates": "tests/integration/test_patchcore.py::test_coreset_candidates_bound_the_patches_the_memory_is_chosen_from",
    "task_options(anomaly).patch_position": "tests/integration/test_patchcore.py::test_patch_position_acts_through_the_config_and_exports",
    "task_options(anomaly).random_features": "tests/integration/test_patchcore.py::test_random_features_are_an_explicit_choice",
    "task_options(anomaly).patch_layers": "tests/integration/test_patchcore.py::test_distance_is_zero_on_memorised_patches_and_coreset_bounds_memory",
    "task_options(anomaly).input_norm": "tests/integration/test_patchcore.py::test_image_norm_makes_distances_indifferent_to_brightness_and_contrast",
    "pretrain.epochs": "tests/integration/test_pretrain.py::test_resumed_pretraining_equals_uninterrupted",
    "pretrain.batch_size": "tests/integration/test_pretrain.py::test_resumed_pretraining_equals_uninterrupted",
    "pretrain.lr": "tests/integration/test_pretrain.py::test_pretrain_options_act",
    "pretrain.temperature": "tests/integration/test_pretrain.py::test_pretrain_options_act",
    "pretrain.proj_dim": "tests/integration/test_pretrain.py::test_pretrain_options_act",
    "pretrain.strength": "tests/integration/test_pretrain.py::test_pretrain_options_act",
    "pretrain.flip": "tests/integration/test_pretrain.py::test_pretrain_options_act",
    "pretrain.name": "tests/integration/test_pretrain.py::test_pretrain_options_act",
    "pretrain.rows": "tests/integration/test_pretrain.py::test_pretraining_rows_never_include_test",
    "population": "tests/integration/test_provenance.py::test_training_records_its_data",
}

#: pure metadata: accepted, acts on nothing but what is written (none left: name, intended_use, targets are checked above)
INERT: dict[str, str] = {}


# --------------------------------------------------------------------------------------------- the contract
def task_option_keys() -> set[str]:
    """Every key of every registered task's own section, as ``task_options(<task>).<key>``."""
    from medlens.tasks import get_task, list_kinds

    keys: set[str] = set()
    for kind in list_kinds():
        task = get_task(kind)
        keys |= {f"task_options({task.name}).{k}" for k in schema_keys(task.options_model)}
    return keys


def test_every_schema_key_is_accounted_for() -> None:
    keys = (schema_keys() - {"task_options"}) | task_option_keys()
    assert len(keys) > 100  # the generator sees the whole schema (data kinds included)
    known = set(EFFECTS) | set(REFUSED) | set(COVERED_BY) | set(INERT)
    missing = sorted(keys - known)
    assert not missing, f"config keys with no proven effect, refusal or justification: {missing}"
    assert not sorted(known - keys), f"entries for keys the schema no longer has: {sorted(known - keys)}"


@pytest.mark.parametrize("key", sorted(EFFECTS))
def test_changing_the_key_has_an_effect(key: str, tmp_path: Path) -> None:
    EFFECTS[key](tmp_path)


def _test_source(ref: str) -> str:
    path, _, name = ref.partition("::")
    src = (ROOT / path).read_text()
    if not name:
        return src
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return ast.get_source_segment(src, node) or ""
    raise AssertionError(f"{ref}: no such test")


@pytest.mark.parametrize("key", sorted(COVERED_BY))
def test_covering_test_exists_and_names_the_key(key: str) -> None:
    src = _test_source(COVERED_BY[key])
    leaf = key.rsplit(".", 1)[-1]
    assert leaf in src, f"{COVERED_BY[key]} does not mention {leaf!r}"


@pytest.mark.parametrize("key", sorted(REFUSED))
def test_refused_key_says_so(key: str) -> None:
    overrides, message = REFUSED[key]
    refused(message, *overrides)


# --------------------------------------------------------------------------------------------- refusals per task
ANOMALY_REFUSALS = {
    "task_options.focal_gamma": "task_options.focal_gamma=1.0",
    "task_options.class_weights": "task_options.class_weights=[1, 2]",
    "task_options.pos_weight": "task_options.pos_weight=auto",
    "task_options.label_smoothing": "task_options.label_smoothing=0.1",
    "optim.backbone_lr": "optim.backbone_lr=0.01",
    "optim.freeze_epochs": "optim.freeze_epochs=1",
    "model.drop_rate": "model.drop_rate=0.2",
    "data.sampler": "data.sampler=weighted",
    "task_options.threshold_method": "task_options.threshold_method=youden",
    "task_options.fixed_threshold": "task_options.fixed_threshold=0.3",
    "task_options.calibrate": "task_options.calibrate=false",
    "optim.ema": "optim.ema=true",
    "trainer.tta": "trainer.tta=true",
}


@pytest.mark.parametrize("key", sorted(ANOMALY_REFUSALS))
def test_classifier_options_are_refused_for_anomaly(key: str) -> None:
    refused(key, ANOMALY_REFUSALS[key], raw=_anomaly_raw())


@pytest.mark.parametrize("override", ["task_options.ae_depth=4", "task_options.anomaly_fpr=0.1", "task_options.normal_label=negative", "task_options.autoencoder=reversed",
                                      "task_options.detector=patchcore", "task_options.memory_size=100", "task_options.input_norm=image"])
def test_anomaly_options_are_refused_for_classifiers(override: str) -> None:
    refused("unknown key for task 'classification'", override)


def test_threshold_options_that_cannot_act_are_refused() -> None:
    refused("acts only with task_options.threshold_method: fixed", "task_options.fixed_threshold=0.3")
    refused("decides by arg-max and has no thresholds", "data.num_labels=3", "task_options.threshold_method=youden")
    refused("task_options.focal_alpha acts only with task_options.loss: focal", "task_options.focal_alpha=0.3", stage="loss")


def test_saved_configs_are_not_refused() -> None:
    """A config written out in full (bundle manifest, config.yaml) holds every key at its value: still accepted."""
    from medlens.tasks import get_task

    for raw in (base(), _anomaly_raw()):
        cfg = make(raw=raw)
        again = config_from_dict(cfg.model_dump(mode="json"))
        get_task(again.data.task or "binary").validate_config(again)


def test_colour_jitter_on_grey_images_is_refused() -> None:
    refused("data.color_augment: true needs data.channels: 3", "data.color_augment=true")
