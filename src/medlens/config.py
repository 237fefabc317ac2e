"""Run configuration: Pydantic models that mirror the YAML file one-to-one.

Every model forbids unknown keys, so a typo such as ``optim.lrr`` is an error that names the key and the
file instead of being silently ignored. ``load_config`` reads YAML, applies ``--set key=value`` overrides and
``MEDLENS__SECTION__KEY`` overrides from a ``.env`` file and the environment, and validates once. Precedence,
lowest first: defaults < YAML < ``.env`` < environment < ``--set``. Every value remembers where it came from (the
YAML file and line, the ``--set`` item, the environment variable, the ``.env`` file and line), so an error names
that place (``run.yaml:12: unknown key 'trainer.max_epoch' (did you mean trainer.max_epochs?)``), and so can a
later check of the value (:meth:`RunConfig.origin`).

Example:
    >>> from medlens.config import load_config
    >>> cfg = load_config("configs/pneumoniamnist.yaml", overrides=["optim.lr=3e-4"])  # doctest: +SKIP
    >>> cfg.optim.lr  # doctest: +SKIP
    0.0003
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from medlens.registry import close_matches

#: ``data.task`` names a label kind some task serves (``medlens.tasks.list_kinds()``); the config layer does not know
#: the tasks, so the name is checked when the task is looked up (``get_task``), with the valid ones listed.
_KIND = r"^[a-z][a-z0-9_]*$"


class ConfigError(ValueError):
    """A configuration file or override is invalid. The message names the file and the key."""


class ValueOrigins(dict[str, str]):
    """Where each value of a config came from: dotted key -> ``run.yaml:12``, ``--set optim.lr=3``,
    ``environment variable MEDLENS__OPTIM__LR`` or ``.env:3 (MEDLENS__OPTIM__LR)`` (:func:`origin_of` reads it).

    Not part of a config's identity: pydantic compares private attributes, and two configs with equal values are
    equal wherever their values came from (a config saved with a run equals the one it was loaded from).
    """

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ValueOrigins)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = None  # type: ignore[assignment]  # a dict: unhashable


def origin_of(origins: dict[str, str], key: str) -> str | None:
    """The origin of ``key`` (dotted) in ``origins``, else of its closest enclosing section (a missing key is blamed
    on the section that lacks it, a key set by a whole ``--set data={...}`` on that item); None when neither.

    Example:
        >>> origin_of({"trainer": "run.yaml:5", "trainer.max_epochs": "run.yaml:6"}, "trainer.precision")
        'run.yaml:5'
    """
    parts = key.split(".") if key else []
    for n in range(len(parts), 0, -1):
        hit = origins.get(".".join(parts[:n]))
        if hit is not None:
            return hit
    return None


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors."""

    # coerce_numbers_to_str: YAML reads `name: 2024` or `--set output.name=1e5` as a number; text fields keep it.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), coerce_numbers_to_str=True)


# --------------------------------------------------------------------------------------------- data
class SplitConfig(StrictModel):
    """How samples are assigned to train/val/test.

    ``method: auto`` uses the dataset's own split when it has one, else a seeded stratified split
    (group-wise when ``group`` is set on the samples).
    """

    method: Literal["auto", "predefined", "stratified", "group", "kfold"] = "auto"
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    seed: int = 0
    # Refuse to train when a patient/exam group appears in two splits (predefined splits can leak).
    allow_group_leakage: bool = False
    # k-fold cross-validation (medlens cv): number of folds and which fold is validation.
    folds: int = Field(5, ge=2)
    fold: int = Field(0, ge=0)
    # medlens cv: "none" folds over every row; a split method (auto, predefined, stratified, group) first splits
    # the data that way and folds over its train + val rows, so its test rows stay out of every fold and can be
    # read once at the end (the --ensemble bundle of the folds is evaluated on them).
    cv_holdout: Literal["none", "auto", "predefined", "stratified", "group"] = "none"


class MetadataConfig(StrictModel):
    """Tabular patient metadata used by fusion models (age, sex, anatomical site)."""

    numeric: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)
    encoding: Literal["onehot", "embedding"] = "onehot"
    hidden: list[int] = Field(default_factory=lambda: [128, 64])
    dropout: float = Field(0.2, ge=0.0, lt=1.0)


class _DataBase(StrictModel):
    """Options common to every data source."""

    label_names: list[str] | None = None  # explicit label order; inferred (sorted) when omitted
    task: str | None = Field(None, pattern=_KIND)  # the label kind (binary, multilabel, anomaly, ...); inferred when omitted
    unknown_labels: Literal["ignore", "negative"] = "ignore"
    image_size: int = Field(224, ge=8, le=4096)
    channels: Literal[1, 3] = 3
    mean: list[float] | None = None  # per channel, in [0, 1] units; ImageNet stats for 3 channels by default
    std: list[float] | None = None
    split: SplitConfig = Field(default_factory=SplitConfig)
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int | None = None
    num_workers: int | None = Field(None, ge=0)  # None: chosen from the CPU count
    cache_images: bool | Literal["auto"] = "auto"  # auto: decoded images in memory up to cache_mb; true: all; false: none
    cache_mb: int | None = Field(None, ge=0)  # image cache budget, MB (None: min(25 % of available RAM, 4096); 0: no cache)
    # decoded, resized images kept on disk between epochs and runs ($MEDLENS_CACHE_DIR or ~/.cache/medlens/images);
    # auto: on for image files at least twice the model's size (see medlens.data.diskcache)
    disk_cache: bool | Literal["auto"] = "auto"
    disk_cache_mb: int | None = Field(None, ge=1)  # disk cache bound, MB (None: 10 % of the free disk, at most 20480)
    augment: Literal["none", "light", "strong"] = "light"
    # the library the augment presets run in (same ranges; see medlens.data.transforms.build_augment)
    augment_backend: Literal["albumentations", "torchvision"] = "albumentations"
    color_augment: bool | None = None  # None: only for 3-channel images
    sampler: Literal["default", "weighted"] = "default"
    max_samples: int | None = Field(None, ge=1)
    on_bad_image: Literal["skip", "error"] = "error"
    metadata: MetadataConfig | None = None


class FolderData(_DataBase):
    """One sub-folder per class: ``root/<class>/*.png``; or ``root/<split>/<class>/*`` when splits exist.

    ``group_pattern``: a regular expression with exactly one capturing group that takes the patient (group) id out
    of each file's path relative to ``root`` (``/``-separated, e.g. ``train/PNEUMONIA/person12_virus_40.jpeg``;
    ``re.search``, so it may match anywhere). Images with one id are never split apart: a validation split carved
    from ``train`` is carved by patient, and ``medlens split audit`` lists the ids found in two splits. Every file
    must match; the first one that does not is named in the error. Kermany's chest X-rays
    (``personN_bacteria_K.jpeg``, ``IM-NNNN-KKKK.jpeg``, ``NORMAL2-IM-NNNN-KKKK.jpeg``), in YAML:
    ``group_pattern: '/((?:NORMAL2-)?IM-\\d+|person\\d+)[-_]'`` (single quotes keep the backslashes).
    """

    kind: Literal["folder"] = "folder"
    root: str
    group_pattern: str | None = None  # regex, one group: the patient id in each file's path below root

    @field_validator("group_pattern")
    @classmethod
    def _one_group(cls, v: str | None) -> str | None:
        if v is None:
            return v
        import re

        try:
            n = re.compile(v).groups
        except re.error as e:
            raise ValueError(f"not a valid regular expression ({e})") from None
        if n != 1:
            raise ValueError(f"needs exactly one capturing group (the patient id), {v!r} has {n}; "
                             "write other parentheses as (?:...)")
        return v


class CsvData(_DataBase):
    """A CSV with an image path column and labels either in one delimited column or one 0/1 column each."""

    kind: Literal["csv"] = "csv"
    path: str
    image_root: str | None = None  # image paths are relative to this (default: the CSV's folder)
    image_column: str = "path"
    label_column: str | None = None  # one column holding label names, e.g. "Effusion|Mass"
    label_delimiter: str = "|"
    label_columns: list[str] | None = None  # or one 0/1/blank column per label
    no_finding: str | None = None  # a value meaning "no label" in label_column (multi-label), e.g. "No Finding"
    group_column: str | None = None
    split_column: str | None = None
    metadata_columns: list[str] = Field(default_factory=list)
    # free text kept with each row (e.g. a radiology report): carried to predictions and reports, never a label
    text_column: str | None = None

    @model_validator(mode="after")
    def _text_is_not_a_label(self) -> CsvData:
        if self.text_column and self.text_column in (self.image_column, self.label_column, *(self.label_columns or [])):
            raise ValueError(f"data.text_column {self.text_column!r} is also the image or a label column; text is never a label")
        return self


class MedMNISTData(_DataBase):
    """An official MedMNIST ``.npz`` file, from a local path or downloaded by flag (MD5-checked)."""

    kind: Literal["medmnist"] = "medmnist"
    flag: str | None = None  # e.g. pneumoniamnist; inferred from the file name when omitted
    path: str | None = None  # local .npz; default: <root>/<flag>.npz
    root: str | None = None  # default: $MEDLENS_DATA_DIR or ~/.cache/medlens/medmnist
    size: Literal[28, 64, 128, 224] = 28
    download: bool = True


class JsonlData(_DataBase):
    """One JSON object per line with a file name and a list of labels."""

    kind: Literal["jsonl"] = "jsonl"
    path: str
    image_root: str | None = None
    image_field: str = "filename"
    labels_field: str = "labels"
    group_field: str | None = "old_examination_id"
    id_field: str | None = None
    split_field: str | None = None
    metadata_fields: list[str] = Field(default_factory=list)
    text_column: str | None = None  # a field of free text kept with each row (a report): never a label

    @model_validator(mode="after")
    def _text_is_not_a_label(self) -> JsonlData:
        if self.text_column and self.text_column in (self.image_field, self.labels_field):
            raise ValueError(f"data.text_column {self.text_column!r} is also the image or labels field; text is never a label")
        return self


_IDENT = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$"  # column, table or schema.table: quoted, never pasted


class _SqlTable(StrictModel):
    table: str = Field(pattern=_IDENT)


class SqlImagesMap(_SqlTable):
    """Your images table: one row per image."""

    id: str = Field("id", pattern=_IDENT)  # primary key (also the sample id)
    path: str = Field("path", pattern=_IDENT)  # file path, relative to data.image_root
    group: str | None = Field(None, pattern=_IDENT)  # patient/examination column for group-aware splits
    split: str | None = Field(None, pattern=_IDENT)  # predefined split column (train/val/test)


class SqlAnnotationsMap(_SqlTable):
    """Your annotations table: one row per (image, label)."""

    image_id: str = Field("image_id", pattern=_IDENT)
    label_id: str = Field("label_id", pattern=_IDENT)
    value: str | None = Field("value", pattern=_IDENT)  # boolean column; None: a row means positive


class SqlLabelsMap(_SqlTable):
    id: str = Field("id", pattern=_IDENT)
    name: str = Field("name", pattern=_IDENT)


class SqlLabelSetsMap(_SqlTable):
    id: str = Field("id", pattern=_IDENT)
    name: str = Field("name", pattern=_IDENT)
    version: str | None = Field("version", pattern=_IDENT)  # None: label sets are not versioned


class SqlLabelSetLabelsMap(_SqlTable):
    """The many-to-many link (versions of a label set may share labels)."""

    label_set_id: str = Field("label_set_id", pattern=_IDENT)
    label_id: str = Field("label_id", pattern=_IDENT)


class SqlDatasetFilter(StrictModel):
    """Which images of the images table form the dataset (endoreg-db keeps them in an AI-dataset link table).

    * a link table: ``{table: ai_dataset_frames, image_id: frame_id, column: ai_dataset_id, equals: 3}`` keeps the
      images whose id the table lists with ``ai_dataset_id = 3``;
    * a column of the images table: ``{column: video_id, equals: 7}`` (no ``table``) keeps its rows with
      ``video_id = 7``.

    Identifiers are quoted by the database dialect and ``equals`` is a bound parameter: no SQL is written by hand.
    """

    table: str | None = Field(None, pattern=_IDENT)  # the link table; None: filter the images table itself
    image_id: str = Field("image_id", pattern=_IDENT)  # link table: its column holding the image id
    column: str = Field(pattern=_IDENT)  # the column compared (in the link table, else in the images table)
    equals: int | str  # the value it must equal (a number for a number column)

    @model_validator(mode="after")
    def _image_id_needs_a_table(self) -> SqlDatasetFilter:
        if self.table is None and "image_id" in self.model_fields_set:
            raise ValueError("data.schema.dataset.image_id names a column of a link table; give data.schema.dataset.table")
        return self


class SqlSchema(StrictModel):
    """Where an existing database keeps images, labels, label sets and annotations (read directly, never written).

    Example YAML (an endoreg-db-shaped schema: ``configs/endoreg_db_example.yaml``)::

        schema:
          images: {table: frames, id: id, path: relative_path, group: video_id}
          annotations: {table: frame_annotations, image_id: frame_id, label_id: label_id, value: value}
          labels: {table: labels, id: id, name: name}
          label_sets: {table: label_sets, id: id, name: name, version: version}
          label_set_labels: {table: label_set_labels, label_set_id: labelset_id, label_id: label_id}
    """

    images: SqlImagesMap
    annotations: SqlAnnotationsMap
    labels: SqlLabelsMap
    label_sets: SqlLabelSetsMap
    label_set_labels: SqlLabelSetLabelsMap
    dataset: SqlDatasetFilter | None = None  # only these images (None: every row of the images table)


class SqlData(_DataBase):
    """Images and annotations in a SQL database (SQLite file or PostgreSQL server)."""

    # `schema` is a field name BaseModel also uses: the field is `schema_` in Python, `schema` in YAML and dumps
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    kind: Literal["sql"] = "sql"
    url: str | None = None  # e.g. sqlite:///data.db or postgresql+psycopg://user@host/db; env MEDLENS_DB_URL
    password_env: str | None = "MEDLENS_DB_PASSWORD"
    password_file: str | None = None
    dataset: str | None = None  # medlens schema: the dataset's name (required there)
    # your own schema instead of medlens' tables (see SqlSchema); `dataset` is then unused
    schema_: SqlSchema | None = Field(None, alias="schema")
    label_set: str
    label_set_version: int | None = None  # None: the newest version
    image_root: str | None = None  # default: the dataset's image_root in the database
    chunk_size: int = Field(5000, ge=1)
    group_by: Literal["patient", "examination"] = "patient"  # patient: the examination's patient_id when set
    metadata_fields: list[str] = Field(default_factory=list)  # keys of images.meta to load as metadata

    @model_validator(mode="after")
    def _dataset_or_schema(self) -> SqlData:
        if self.schema_ is None and not self.dataset:
            raise ValueError("data.dataset is required for medlens' own tables (or give data.schema for your own tables)")
        if self.schema_ is not None and self.metadata_fields:
            raise ValueError("data.metadata_fields needs medlens' own tables (images.meta); it cannot act with data.schema")
        return self


class NihData(_DataBase):
    """NIH ChestX-ray14 ``Data_Entry_2017*.csv`` tables, optionally several sources harmonised."""

    kind: Literal["nih"] = "nih"
    path: str  # Data_Entry csv (or .csv.gz)
    image_root: str | None = None
    images: str | None = None  # optional CSV/listing restricting to the images present
    harmonize: dict[str, str] = Field(default_factory=dict)  # source label -> target label
    extra_sources: list[dict[str, Any]] = Field(default_factory=list)


class HfData(_DataBase):
    """A Hugging Face ``datasets`` dataset: local parquet/arrow/imagefolder, or a hub name when online."""

    kind: Literal["hf"] = "hf"
    path: str  # local folder/file, or a hub name
    format: Literal["auto", "parquet", "arrow", "imagefolder", "hub"] = "auto"
    image_column: str = "image"
    label_column: str = "label"
    split_map: dict[str, str] = Field(default_factory=dict)  # hf split name -> train/val/test
    group_column: str | None = None
    metadata_columns: list[str] = Field(default_factory=list)
    cache_dir: str | None = None  # where embedded image bytes are written once (default ~/.cache/medlens/hf)
    text_column: str | None = None  # a string column of free text kept with each row (a report): never a label

    @model_validator(mode="after")
    def _text_is_not_a_label(self) -> HfData:
        if self.text_column and self.text_column in (self.image_column, self.label_column):
            raise ValueError(f"data.text_column {self.text_column!r} is also the image or the label column; text is never a label")
        return self


class SyntheticData(_DataBase):
    """Generated images for demos and tests: bright blobs decide the class (no download needed)."""

    kind: Literal["synthetic"] = "synthetic"
    num_samples: int = Field(600, ge=10)
    num_labels: int = Field(2, ge=1)
    seed: int = 0


class WebDatasetUrls(StrictModel):
    """The shard lists of ``kind: webdataset``, one per split: a pattern (``train-{000..009}.tar``) or a list of them;
    local paths (relative to the YAML file, or ``DATA_DIR/...``), ``file://`` or ``http(s)://`` URLs."""

    train: str | list[str]
    val: str | list[str]
    test: str | list[str] | None = None


class WebDatasetData(_DataBase):
    """Tar shards in the WebDataset layout: ``key.png`` + ``key.cls`` (or ``key.json``) per sample, one list per split.

    The training split is streamed (shards dealt to loader workers and DDP ranks, a shuffle buffer, resumable
    mid-epoch); validation and test members are read at random by byte offset. See medlens.data.readers.webdataset.
    """

    kind: Literal["webdataset"] = "webdataset"
    urls: WebDatasetUrls
    image_ext: list[str] = Field(default_factory=lambda: ["png", "jpg", "jpeg", "tif", "tiff", "bmp", "dcm", "webp"])
    label_member: Literal["cls", "json"] = "cls"  # cls: a class name or index (into label_names); json: its label_field
    label_field: str = "label"  # the .json key holding a label name, an index, or a list of them (multi-label)
    group_field: str | None = None  # the .json key holding the patient (group) id
    metadata_fields: list[str] = Field(default_factory=list)  # .json keys loaded as metadata
    text_column: str | None = None  # free text kept with each sample: a member extension (txt) or a .json key; never a label
    shuffle_buffer: int = Field(1000, ge=1)  # training samples held to shuffle the stream (1: shard order only)
    timeout_s: float = Field(60.0, gt=0.0)  # an HTTP connection or read stalled this long fails, naming the shard

    @model_validator(mode="after")
    def _stream_options_act(self) -> WebDatasetData:
        if self.sampler != "default":
            raise ValueError("data.sampler: weighted draws need random access to the training rows; a webdataset stream "
                             "reads them in shard order (use the loss's class weights instead)")
        if self.split.method not in ("auto", "predefined"):
            raise ValueError(f"data.split.method: {self.split.method} cannot act on webdataset shards; the splits are "
                             "the shard lists data.urls.train/val/test (use auto or predefined)")
        if self.disk_cache is True or self.disk_cache_mb is not None:
            raise ValueError("data.disk_cache: shard members are not files the disk cache can key; remove the key")
        if self.label_member == "cls" and self.label_field != "label":  # by value: a saved config holds every key
            raise ValueError("data.label_field names a .json key; it acts with data.label_member: json")
        if self.text_column and (self.text_column in self.image_ext or self.text_column == self.label_member
                                 or (self.label_member == "json" and self.text_column == self.label_field)):
            raise ValueError(f"data.text_column {self.text_column!r} is also the image or the label; text is never a label")
        return self


DataConfig = Annotated[
    FolderData | CsvData | MedMNISTData | JsonlData | SqlData | NihData | HfData | SyntheticData | WebDatasetData,
    Field(discriminator="kind"),
]


# -------------------------------------------------------------------------------------------- model
class ModelConfig(StrictModel):
    """Network: a timm backbone with a linear head, or an autoencoder for ``task: anomaly``."""

    backbone: str = "resnet18"
    pretrained: bool | str = False  # true: timm's default weights via the HF cache; or a hub id / local weights file
    checkpoint: str | None = None  # local state dict (.pth/.pt/.safetensors), e.g. a self-supervised ResNet-50
    # adapt the stem for 28-64 px inputs: auto, true/false, or the stride reduction itself (1, 2 or 4)
    small_input: bool | Literal["auto", 1, 2, 4] = "auto"
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0)
    drop_path_rate: float = Field(0.0, ge=0.0, lt=1.0)


# -------------------------------------------------------------------------------------------- pretrain
class PretrainConfig(StrictModel):
    """``medlens pretrain``: SimCLR self-supervised pretraining of ``model.backbone`` on the data's images (labels ignored)."""

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(128, ge=4)
    lr: float = Field(1e-3, gt=0.0)
    temperature: float = Field(0.2, gt=0.0)  # NT-Xent softmax temperature
    proj_dim: int = Field(64, ge=2)  # projection-head output size (the head is dropped after pretraining)
    strength: float = Field(1.0, ge=0.0, le=2.0)  # scales every augmentation range (0: identical views)
    flip: bool = False  # horizontal flips (off: laterality carries meaning in chest X-rays)
    rows: Literal["train_val", "train", "task_training"] = "train_val"  # task_training: the task's own (normals for anomaly)
    name: str | None = None  # run folder name under output.dir (default: <output.name or name>-pretrain)


# -------------------------------------------------------------------------------------------- optim
class OptimConfig(StrictModel):
    """Loss, optimiser and learning-rate schedule."""

    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0.0)
    backbone_lr: float | None = Field(None, gt=0.0)  # None: same as lr
    weight_decay: float = Field(1e-4, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    scheduler: Literal["cosine", "plateau", "multistep", "none"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0.0)
    min_lr: float = Field(0.0, ge=0.0)
    milestones: list[int] = Field(default_factory=lambda: [30, 60])
    gamma: float = Field(0.1, gt=0.0)
    plateau_patience: int = Field(2, ge=0)
    freeze_backbone: bool = False
    freeze_epochs: int = Field(0, ge=0)
    ema: bool = False
    ema_decay: float = Field(0.999, gt=0.0, lt=1.0)
    mixup_alpha: float = Field(0.0, ge=0.0)
    cutmix_alpha: float = Field(0.0, ge=0.0)
    mix_prob: float = Field(1.0, ge=0.0, le=1.0)
    grad_clip: float | None = Field(None, gt=0.0)
    accumulate_grad_batches: int = Field(1, ge=1)


# ------------------------------------------------------------------------------------------ trainer
class TrainerConfig(StrictModel):
    """Lightning Trainer settings."""

    max_epochs: int = Field(10, ge=1)
    max_steps: int = -1
    max_time_s: float | None = None  # stop training after this many seconds (best checkpoint kept)
    limit_train_batches: float | int | None = None
    precision: Literal["32", "bf16", "16", "auto"] = "auto"  # auto: bf16 autocast on CPUs with AMX units, fp16 on CUDA, else 32
    channels_last: bool | Literal["auto"] = "auto"  # auto: a short measured probe on the first batch picks the faster layout
    compile: bool = False
    # keep freed activation buffers in the process (glibc mmap/trim thresholds): faster steps, RSS stays at its peak
    tune_allocator: bool = True
    accelerator: str = "auto"
    devices: int | str | list[int] = 1
    num_nodes: int = 1
    strategy: str = "auto"
    monitor: str = "auto"  # e.g. val/auroc_macro; auto picks by task
    monitor_mode: Literal["max", "min", "auto"] = "auto"
    early_stopping_patience: int | None = None
    # an epoch counts as improved only when the monitored metric moves by more than this (its units; 0: any move)
    early_stopping_min_delta: float = Field(0.0, ge=0.0)
    # also keep the k best checkpoints in checkpoints/top/ (-1: every validated epoch; 1: only checkpoints/best.ckpt)
    save_top_k: int = Field(1, ge=-1)
    checkpoint_every_n_epochs: int | None = Field(None, ge=1)  # also write checkpoints/every/epochNNN.ckpt each N epochs
    # test-time augmentation: none, hflip, flips (original + h + v), d4 (8 rotations/flips); true = hflip
    tta: bool | Literal["none", "hflip", "flips", "d4"] = False
    deterministic: bool = True
    log_every_n_steps: int = 20
    progress_bar: bool = True
    auto_resume: bool = False
    resume: str | None = None
    val_check_interval: float | int | None = None

    @model_validator(mode="after")
    def _checkpoint_options_act(self) -> TrainerConfig:
        if self.early_stopping_min_delta > 0 and self.early_stopping_patience is None:
            raise ValueError("trainer.early_stopping_min_delta acts only with trainer.early_stopping_patience set")
        if self.save_top_k == 0:
            raise ValueError("trainer.save_top_k: 0 would keep no best checkpoint; use 1 (best.ckpt only), k > 1 or -1 (all)")
        return self

    @field_validator("tta", mode="after")
    @classmethod
    def _tta_none_is_off(cls, v: Any) -> Any:
        return False if v == "none" else v  # one spelling of "off", so `if cfg.trainer.tta` reads right everywhere

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_number(cls, v: Any) -> Any:
        # YAML reads `precision: 16` as an int (and `--set trainer.precision=32` too): the same choice as "16"
        if isinstance(v, int | float) and not isinstance(v, bool) and v in (16, 32):
            return str(int(v))
        return v


class OodConfig(StrictModel):
    """The out-of-distribution gate fitted at the end of training (tasks that have one: the classifiers).

    A detector on the penultimate features of the training images flags inputs unlike them; its threshold lets
    ``val_pass`` of the validation images through (0.95: 5 % of in-distribution images are flagged). See medlens.ood.
    """

    # mahalanobis: measured the better gate here (benchmarks/ood.py); knn: nearest training images; none: no gate
    method: Literal["mahalanobis", "knn", "none"] = "mahalanobis"
    # stages: channel means and spreads of the stem and each stage beside the pooled vector (Mahalanobis per stage, standardised
    # and averaged); penultimate: the pooled vector the head reads. benchmarks/ood.py compares them
    features: Literal["stages", "penultimate"] = "stages"
    k: int = Field(10, ge=1, le=1000)  # knn: the neighbour whose cosine distance is the score
    val_pass: float = Field(0.95, gt=0.5, lt=1.0)
    max_train: int = Field(4096, ge=10, le=20000)  # training images whose features are kept (a seeded subset beyond)


class OutputConfig(StrictModel):
    """Where runs go."""

    dir: str = "runs"
    name: str | None = None  # default: config file stem
    overwrite: bool = False


class TrackingConfig(StrictModel):
    """Experiment trackers; several may run at once."""

    backends: list[Literal["csv", "tensorboard", "mlflow", "wandb"]] = Field(default_factory=lambda: ["csv"])
    mlflow_uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///<run dir>/../mlflow.db
    experiment: str = "medlens"
    wandb_project: str | None = None

    @model_validator(mode="after")
    def _backend_options_need_their_backend(self) -> TrackingConfig:
        # an option of a tracker that is not used would do nothing: refused, naming the backend to add
        for key, backend in (("wandb_project", "wandb"),):
            if getattr(self, key) is not None and backend not in self.backends:
                raise ValueError(f"tracking.{key} acts only with {backend!r} in tracking.backends")
        return self


class TargetRange(StrictModel):
    """A target range: ``{min: 0.86, max: 0.92}`` or ``[0.86, 0.92]`` in YAML (either end may be omitted)."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, v: Any) -> Any:
        if isinstance(v, list | tuple):
            if len(v) != 2:
                raise ValueError(f"a target range is [min, max]; got {list(v)}")
            return {"min": v[0], "max": v[1]}
        return v

    @model_validator(mode="after")
    def _ordered(self) -> TargetRange:
        if self.min is None and self.max is None:
            raise ValueError("a target range needs min, max or both")
        for x in (self.min, self.max):
            if x is not None and not (x == x):
                raise ValueError("a target range end is NaN")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"target range min {self.min} > max {self.max}")
        return self


class RunConfig(StrictModel):
    """One training run. Sections mirror the YAML file."""

    name: str | None = None
    seed: int = 42
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    ood: OodConfig = Field(default_factory=OodConfig)
    # the task's own options (loss, operating point, detector, ...): carried as given here and validated by the task
    # that data.task selects (``Task.options_model``; ``medlens.tasks.get_task(kind).options(cfg)``)
    task_options: dict[str, Any] = Field(default_factory=dict)
    # e.g. {auroc_macro: 0.86} (a lower bound; an upper one for ece/brier/loss) or {auroc_macro: [0.86, 0.92]}
    targets: dict[str, float | TargetRange] = Field(default_factory=dict)
    intended_use: str = (
        "Research use only. Not a medical device; outputs are not a diagnosis and must be reviewed by a "
        "qualified clinician."
    )
    # who the training images come from (site, period, age range, scanner, ...): written to the bundle's training_data
    # record and shown beside every decision (the page, the per-image report, /v1/model)
    population: str = ""
    # where each value came from (dotted key -> "run.yaml:12", "--set optim.lr=3", ...): for error messages only
    _origins: ValueOrigins = PrivateAttr(default_factory=lambda: ValueOrigins())

    def origin(self, key: str) -> str | None:
        """Where the value of ``key`` (dotted, e.g. ``model.backbone``) came from, for an error message: the YAML
        file and line (``run.yaml:7``), ``--set model.backbone=x``, ``environment variable MEDLENS__MODEL__BACKBONE``
        or ``.env:3 (MEDLENS__MODEL__BACKBONE)``; the closest enclosing section's when the key itself was not
        given; None for a default (or a config built from a dict without a file).

        Example:
            >>> cfg = config_from_dict({"data": {"kind": "synthetic"}}, overrides=["model.backbone=resnet10t"])
            >>> cfg.origin("model.backbone")
            '--set model.backbone=resnet10t'
        """
        return origin_of(self._origins, key)

    def where(self, key: str) -> str:
        """``"run.yaml:7: "`` (see :meth:`origin`) to put before a message about ``key``, or ``""`` for a default."""
        o = self.origin(key)
        return f"{o}: " if o else ""

    @field_validator("targets")
    @classmethod
    def _targets_finite(cls, v: dict[str, float | TargetRange]) -> dict[str, float | TargetRange]:
        for k, x in v.items():
            if isinstance(x, float) and not (x == x):  # NaN check without numpy
                raise ValueError(f"target {k!r} is NaN")
        return v

    def redacted_dump(self) -> dict[str, Any]:
        """The config as JSON-ready data (``model_dump(mode="json")``) with passwords replaced by ``***``.

        What is written anywhere (``config.yaml``, the bundle manifest, tracker parameters) is this, never
        the raw dump: a password in ``data.url`` must not reach disk. See :func:`redact_secrets`.

        Example:
            >>> cfg = config_from_dict({"data": {"kind": "sql", "url": "postgresql://u:pw@db/x", "dataset": "d",
            ...                                  "label_set": "l"}})
            >>> cfg.redacted_dump()["data"]["url"]
            'postgresql://u:***@db/x'
        """
        return redact_secrets(self.model_dump(mode="json"))

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        d = self.data
        if d.augment == "none" and d.augment_backend != "albumentations":
            raise ValueError(f"data.augment_backend: {d.augment_backend} acts only with data.augment: light or strong")
        if d.color_augment and d.channels == 1:  # colour jitter (hue, saturation) cannot act on a grey image
            raise ValueError("data.color_augment: true needs data.channels: 3 (colour jitter cannot act on grey images)")
        for name, vals in (("mean", d.mean), ("std", d.std)):
            if vals is not None and len(vals) != d.channels:
                raise ValueError(f"data.{name} has {len(vals)} values but data.channels is {d.channels}")
        return self


# ---------------------------------------------------------------------------------------- redaction
#: What replaces a secret in everything medlens writes.
REDACTED = "***"

# scheme://user:password@host: the password runs to the last "@" before the query ("?") or fragment ("#"), so an
# unencoded "@" or "/" in it is hidden too (at worst an "@" in the path hides the host as well); a port or a
# Windows drive is no password ("http://host:5000/a@b", "file://C:/a@b").
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][\w+.\-]*://[^:/@?#\s]*:)(?P<pw>(?!\d*/)[^?#\s]*@)")
# ?password=... / &sslpassword=... in a URL query, or password=... in a libpq "key=value" connection string
_SECRET_PARAM = re.compile(
    r"(?P<head>(?:^|[?&;\s])(?:password|passwd|pwd|sslpassword|secret|token|access_token|api_key|apikey)=)"
    r"(?P<pw>[^&#;\s]*)",
    re.IGNORECASE,
)
# keys whose value is itself a secret (``password_env``/``password_file`` name where it is, and are kept)
_SECRET_KEY = re.compile(r"^(password|passwd|pwd|secret|token|api_key|apikey|access_token|secret_key)$", re.IGNORECASE)


def redact_url(url: str) -> str:
    """Replace the password of every URL in ``url`` (user info and password query parameters) with ``***``.

    Handles SQLAlchemy URLs (``postgresql+psycopg://user:pass@host/db``), ``?password=`` query parameters and
    libpq ``key=value`` strings; text without a password is returned unchanged.

    Args:
        url: a URL or any text that may contain one.

    Returns:
        The text with each password replaced by ``***``.

    Example:
        >>> redact_url("postgresql+psycopg://ana:s3cret@db.example.org:5432/imgs?sslmode=require&password=x")
        'postgresql+psycopg://ana:***@db.example.org:5432/imgs?sslmode=require&password=***'
    """
    if not isinstance(url, str) or not url:
        return url

    def mask_userinfo(m: re.Match[str]) -> str:
        return m["head"] + (REDACTED + "@" if len(m["pw"]) > 1 else m["pw"])  # "user:@host" has no password

    out = _URL_PASSWORD.sub(mask_userinfo, url)
    return _SECRET_PARAM.sub(lambda m: m["head"] + (REDACTED if m["pw"] else ""), out)


def redact_secrets(obj: Any) -> Any:
    """A copy of ``obj`` (dicts, lists, strings) with every secret replaced by ``***``.

    Strings have their URL passwords masked (:func:`redact_url`); the values of keys named like a secret
    (``password``, ``token``, ``api_key``, ...) are replaced whole. Keys that only say where a secret is
    (``password_env``, ``password_file``) are kept. A Pydantic model is dumped to JSON-ready data first.

    Example:
        >>> redact_secrets({"data": {"url": "postgresql://u:pw@h/db", "password_env": "DB_PW"}, "token": "abc"})
        {'data': {'url': 'postgresql://u:***@h/db', 'password_env': 'DB_PW'}, 'token': '***'}
    """
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    if isinstance(obj, dict):
        return {
            k: (REDACTED if isinstance(k, str) and _SECRET_KEY.match(k) and v not in (None, "") else redact_secrets(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list | tuple):
        return type(obj)(redact_secrets(v) for v in obj)
    if isinstance(obj, str):
        return redact_url(obj)
    return obj


# ------------------------------------------------------------------------------------------ loading
def _parse_scalar(text: str) -> Any:
    """Parse an override value with YAML rules, so ``3e-4`` is a float and ``[a, b]`` a list."""
    # YAML 1.1 reads "3e-4" as a string; it is left a string on purpose: Pydantic turns it into a float for
    # float fields, while string fields (output.name=1e5, =inf) keep the text the user typed.
    return yaml.safe_load(text) if text != "" else ""


#: an override: ``section.key=value`` and where it came from (``--set ...``, ``environment variable ...``, ``.env:3 ...``)
Override = tuple[str, str]


def _set_items(overrides: list[str] | None) -> list[Override]:
    return [(item, f"--set {item}") for item in overrides or []]


def _apply(raw: dict[str, Any], items: list[Override], origins: dict[str, str] | None = None) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a copy of ``raw``, recording each key's origin in ``origins``."""
    import copy

    out = copy.deepcopy(raw)
    for item, origin in items:
        # an environment variable or a .env line is named by itself; a --set item by the item
        blame = origin if not origin.startswith("--set ") else f"--set {item!r}"
        if "=" not in item:
            raise ConfigError(f"{blame}: an override must look like section.key=value")
        key, text = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"{blame}: the override has an empty key")
        node = out
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
                if origins is not None:  # a section this override made: its errors are the override's
                    origins.setdefault(".".join(parts[: i + 1]), origin)
            if not isinstance(nxt, dict):
                raise ConfigError(f"{blame}: {'.'.join(parts[: i + 1])!r} is not a section (it holds a value)")
            node = nxt
        try:
            node[parts[-1]] = _parse_scalar(text)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"{blame}: the value {text!r} is not valid YAML ({problem})") from None
        if origins is not None:
            dotted = ".".join(parts)
            for k in [k for k in origins if k.startswith(dotted + ".")]:
                del origins[k]  # a whole section replaced: its old keys' lines no longer hold its values
            origins[dotted] = origin
    return out


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict (a copy is returned).

    Example:
        >>> apply_overrides({"optim": {"lr": 1.0}}, ["optim.lr=0.1", "trainer.max_epochs=3"])
        {'optim': {'lr': 0.1}, 'trainer': {'max_epochs': 3}}
    """
    return _apply(raw, _set_items(overrides))


def _env_key(name: str, prefix: str) -> str | None:
    """``MEDLENS__OPTIM__LR`` -> ``optim.lr`` (pydantic-settings' nested delimiter style); None for other names."""
    return name[len(prefix) :].lower().replace("__", ".") if name.startswith(prefix) and len(name) > len(prefix) else None


def _env_items(prefix: str = "MEDLENS__") -> list[Override]:
    items = []
    for k, v in os.environ.items():
        key = _env_key(k, prefix)
        if key is not None:
            items.append((f"{key}={v}", f"environment variable {k}"))
    return sorted(items)


def _env_overrides(prefix: str = "MEDLENS__") -> list[str]:
    """``MEDLENS__OPTIM__LR=3e-4`` in the environment -> ``optim.lr=3e-4``."""
    return [item for item, _ in _env_items(prefix)]


#: a variable's assignment in a .env file (``export`` allowed), for its line number
_DOTENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.]*)\s*=")


def _dotenv_items(env_file: str | Path | None = None, prefix: str = "MEDLENS__") -> list[Override]:
    if env_file is None:
        p = Path.cwd() / ".env"
        if not p.is_file():
            return []
    else:
        p = Path(env_file)
        if not p.is_file():
            raise ConfigError(f"env file not found: {p}")
    from dotenv import dotenv_values  # python-dotenv: pydantic-settings' own .env parser

    lines: dict[str, int] = {}
    for n, text in enumerate(p.read_text(errors="replace").splitlines(), start=1):
        m = _DOTENV_LINE.match(text)
        if m:
            lines[m.group(1)] = n  # the last assignment wins, in python-dotenv too
    items = []
    # interpolate=False: a ${VAR} in the file stays literal text (expanding it from the environment put a secret
    # into a run-folder name); the file is announced, so its overrides are never applied without a word
    for k, v in dotenv_values(p, interpolate=False).items():
        key = _env_key(k, prefix)
        if key is not None and v is not None:
            where = f"{p}:{lines[k]}" if k in lines else str(p)
            items.append((f"{key}={v}", f"{where} ({k})"))
    import logging

    logging.getLogger("medlens.config").info("using .env: %s (%d overrides)", p, len(items))
    return sorted(items)


def dotenv_overrides(env_file: str | Path | None = None, prefix: str = "MEDLENS__") -> list[str]:
    """``MEDLENS__SECTION__KEY=value`` lines of a ``.env`` file as ``section.key=value`` overrides.

    Args:
        env_file: the file; None: ``.env`` in the current folder when there is one.

    Example:
        >>> dotenv_overrides("no-such-dir/.env")  # doctest: +SKIP
        ConfigError: env file not found: no-such-dir/.env
    """
    return [item for item, _ in _dotenv_items(env_file, prefix)]


def yaml_key_lines(node: yaml.Node | None, prefix: str = "") -> dict[str, int]:
    """Dotted key -> 1-based line of every key (and list item) in a composed YAML document (``yaml.compose``).

    Example:
        >>> yaml_key_lines(yaml.compose("data:\\n  kind: synthetic\\noptim:\\n  lr: 0.1\\n"))
        {'data': 1, 'data.kind': 2, 'optim': 3, 'optim.lr': 4}
    """
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                continue
            key = f"{prefix}{k.value}"
            out[key] = k.start_mark.line + 1
            out.update(yaml_key_lines(v, key + "."))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out[f"{prefix}{i}"] = v.start_mark.line + 1
            out.update(yaml_key_lines(v, f"{prefix}{i}."))
    return out


def _data_tags() -> set[str]:
    """The ``kind`` tags of the data sources: pydantic puts the tag in an error's location (``data.folder.root``)."""
    return {m.model_fields["kind"].default for m in _models_in(DataConfig) if "kind" in m.model_fields}


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The config models an annotation can hold (through ``X | None``, ``Annotated``, ``list[X]``, unions)."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out += _models_in(arg)
    return out


def _keys_at(loc: tuple[Any, ...]) -> list[str]:
    """The keys valid inside the section at pydantic location ``loc`` (tags narrow a union: ``data.folder``)."""
    models: list[type[BaseModel]] = [RunConfig]
    for part in loc:
        if isinstance(part, int):
            continue  # a list item: its models are already the candidates
        tagged = [m for m in models if m.model_fields.get("kind") is not None and m.model_fields["kind"].default == part]
        if tagged:
            models = tagged
            continue
        fields = [m.model_fields[part] for m in models if part in m.model_fields]
        models = [m for f in fields for m in _models_in(f.annotation)]
        if not models:
            return []  # a free-form mapping (task_options, targets): the task or the field checks its keys
    return sorted({k for m in models for k in m.model_fields})


#: a key named at the start of a model-level message ("data.color_augment: true needs ...")
_KEY_IN_MESSAGE = re.compile(r"^([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+)\b")


def _format_validation_error(err: ValidationError, source: str, origins: dict[str, str] | None = None) -> str:
    """One line per problem, each led by where its value came from (``run.yaml:12``, ``--set ...``, ...)."""
    origins, tags = origins or {}, _data_tags()
    lines = []
    for e in err.errors():
        raw_loc = tuple(e["loc"])
        # Pydantic puts the discriminator tag (and the class name) in the location; drop them for readability.
        parts = [str(p) for p in raw_loc if not (isinstance(p, str) and (p.endswith("Data") or p in tags))]
        loc = ".".join(parts)
        if e["type"] == "extra_forbidden":
            where = origin_of(origins, loc) or source
            close = close_matches(parts[-1], _keys_at(raw_loc[:-1]), n=1)  # the leaf against its section's keys
            hint = f" (did you mean {'.'.join([*parts[:-1], close[0]])}?)" if close else ""
            lines.append(f"{where}: unknown key {loc!r}{hint}")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        named = _KEY_IN_MESSAGE.match(msg) if not loc else None
        where = origin_of(origins, loc or (named.group(1) if named else "")) or source
        # a check across keys names its keys in the message: "data.color_augment: true needs data.channels: 3"
        lines.append(f"{where}: {msg}" if named else f"{where}: {loc or '<root>'}: {msg}")
    return "; ".join(lines)


#: Keys that moved from the core sections into ``task_options`` (configs and bundles written before the move keep
#: loading): old dotted key -> (key in ``task_options``, the old schema's default). This table is the one place that
#: knows the old layout. A saved config holds every key at its value, so a key at its old default is dropped (it
#: asked for nothing) and only a changed one moves: a classifier's saved config does not carry the detector's keys.
LEGACY_TASK_KEYS: dict[str, tuple[str, Any]] = {
    "model.autoencoder": ("autoencoder", "unet"), "model.ae_depth": ("ae_depth", 3), "model.ae_width": ("ae_width", 32),
    "model.latent_dim": ("latent_dim", 128), "model.ae_skip_levels": ("ae_skip_levels", None),
    "model.anomaly_score": ("anomaly_score", "mean"), "model.anomaly_map": ("anomaly_map", "mse"),
    "model.score_percentile": ("score_percentile", 99.0), "model.anomaly_fpr": ("anomaly_fpr", 0.05),
    "model.detector": ("detector", "autoencoder"), "model.memory_size": ("memory_size", 4096),
    "model.patch_layers": ("patch_layers", [2, 3]), "model.input_norm": ("input_norm", "dataset"),
    "optim.loss": ("loss", "auto"), "optim.focal_gamma": ("focal_gamma", 2.0), "optim.focal_alpha": ("focal_alpha", None),
    "optim.class_weights": ("class_weights", "none"), "optim.pos_weight": ("pos_weight", "none"),
    "optim.label_smoothing": ("label_smoothing", 0.0),
    "trainer.threshold_method": ("threshold_method", "f1"), "trainer.fixed_threshold": ("fixed_threshold", 0.5),
    "trainer.calibrate": ("calibrate", True), "trainer.orientation_check": ("orientation_check", False),
    "data.normal_label": ("normal_label", None),
}


def _same(a: Any, b: Any) -> bool:
    """An old value equals the old default (``3`` and ``3.0``, ``[2, 3]`` and ``(2, 3)`` alike; text as typed)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, str) or isinstance(b, str):
        return str(a) == str(b) if not isinstance(a, bool) and not isinstance(b, bool) else a == b
    return a == b


def migrate_legacy(raw: dict[str, Any], origins: dict[str, str] | None = None) -> dict[str, Any]:
    """Move keys of the old layout (``model.ae_depth``, ``optim.loss``, ``trainer.threshold_method``, ...) into
    ``task_options`` (a copy is returned). A key at its old default is dropped; a key given in both places is an
    error naming both. ``origins`` (:class:`ValueOrigins`) follow the keys that move.

    Example:
        >>> migrate_legacy({"data": {"kind": "synthetic"}, "optim": {"loss": "focal", "lr": 0.01, "focal_gamma": 2.0}})
        {'data': {'kind': 'synthetic'}, 'optim': {'lr': 0.01}, 'task_options': {'loss': 'focal'}}
    """
    import copy

    out = copy.deepcopy(raw)
    moved: dict[str, tuple[str, Any]] = {}
    for old, (new, default) in LEGACY_TASK_KEYS.items():
        section, leaf = old.split(".")
        node = out.get(section)
        if isinstance(node, dict) and leaf in node:
            value = node.pop(leaf)
            if not _same(value, default):
                moved[new] = (old, value)
    if moved:
        opts = out.get("task_options")
        opts = {} if opts is None else opts
        origins = {} if origins is None else origins
        if not isinstance(opts, dict):
            raise ConfigError(f"{origin_of(origins, 'task_options') or 'task_options'}: task_options must be a mapping")
        for new, (old, value) in moved.items():
            if new in opts:
                where = origin_of(origins, old)
                raise ConfigError(f"{where + ': ' if where else ''}{old} and task_options.{new} are the same option; "
                                  f"keep task_options.{new}")
            opts[new] = value
            if old in origins:
                origins[f"task_options.{new}"] = origins[old]
        out["task_options"] = opts
    return out


def config_from_dict(raw: dict[str, Any], source: str = "<dict>", overrides: list[str] | None = None,
                     env_file: str | Path | None = None, key_lines: dict[str, int] | None = None) -> RunConfig:
    """Validate a config dict (after ``.env``, environment and ``overrides``, in that order) into a :class:`RunConfig`.

    Args:
        raw: the config as read (sections data, model, optim, ...).
        source: where ``raw`` came from, for messages (a file name).
        overrides: ``section.key=value`` strings (``--set``), applied last.
        env_file: a ``.env`` file (None: ``./.env`` when there is one).
        key_lines: dotted key -> line of ``source`` (:func:`yaml_key_lines`), so errors name the line.

    Example:
        >>> config_from_dict({"data": {"kind": "synthetic"}}, overrides=["trainer.max_epoch=3"])  # doctest: +SKIP
        ConfigError: --set trainer.max_epoch=3: unknown key 'trainer.max_epoch' (did you mean trainer.max_epochs?)
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the config must be a mapping with sections data, model, optim, ...")
    origins = ValueOrigins({k: f"{source}:{n}" for k, n in (key_lines or {}).items()})
    items = [*_dotenv_items(env_file), *_env_items(), *_set_items(overrides)]
    merged = migrate_legacy(_apply(raw, items, origins), origins)
    try:
        cfg = RunConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source, origins)) from None
    cfg._origins = origins
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None, env_file: str | Path | None = None) -> RunConfig:
    """Load a YAML run config, apply overrides, and validate it.

    Relative data paths in the file are resolved against the file's folder, so a config can be run from
    anywhere; a path starting with ``DATA_DIR/`` is read below the data folder: ``$MEDLENS_DATA_DIR``, the user
    cache ``~/.cache/medlens/data``, or a checkout's ``../shared/data`` (:func:`data_dir_candidates`).

    Args:
        path: YAML file.
        overrides: ``section.key=value`` strings, applied after the file, ``.env`` and environment.
        env_file: a ``.env`` file with ``MEDLENS__SECTION__KEY=value`` lines (default: ``./.env`` if present).

    Returns:
        The validated config.

    Example:
        >>> cfg = load_config("configs/pneumoniamnist.yaml", ["trainer.max_epochs=1"])  # doctest: +SKIP
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    loader = yaml.SafeLoader(p.read_text())
    try:  # one parse: the nodes give each key's line, the document the values
        node = loader.get_single_node()
        raw = (loader.construct_document(node) if node is not None else None) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{p}: invalid YAML{where}: {what}") from None
    finally:
        loader.dispose()
    cfg = config_from_dict(raw, source=str(p), overrides=overrides, env_file=env_file, key_lines=yaml_key_lines(node))
    if cfg.name is None and cfg.output.name is None:
        cfg.output.name = p.stem
    return _resolve_paths(cfg, p.parent.resolve())


_PATH_FIELDS = ("root", "path", "image_root", "images", "password_file", "cache_dir")

#: A data path that starts with this is read below the data folder (:func:`data_dir_candidates`), so one config runs
#: on a user's machine, in a container and in a developer checkout. It is a fixed prefix, not a variable: nothing
#: else in a path is expanded (a ``${VAR}`` stays literal text).
DATA_DIR_PREFIX = "DATA_DIR/"


def data_dir_candidates(config_dir: str | Path | None = None) -> list[Path]:
    """Where ``DATA_DIR/...`` paths are looked for, in this order.

    ``$MEDLENS_DATA_DIR`` when set; the user cache ``~/.cache/medlens/data``; then, for a config inside a
    developer checkout, a ``shared/data`` folder in the config's folder or one of its two parents (the
    repository's ``../shared/data``). The first folder holding the file wins.

    Example:
        >>> data_dir_candidates()[-1] == Path.home() / ".cache" / "medlens" / "data"  # doctest: +SKIP
        True
    """
    out = []
    env = os.environ.get("MEDLENS_DATA_DIR")
    if env:
        out.append(Path(env).expanduser())
    out.append(Path.home() / ".cache" / "medlens" / "data")
    if config_dir is not None:
        base = Path(config_dir).resolve()
        out += [p / "shared" / "data" for p in [base, *base.parents][:3]]
    return out


def resolve_data_path(value: str, config_dir: str | Path | None = None) -> str:
    """``DATA_DIR/x`` -> the first candidate folder holding ``x`` (or the first candidate when none does, so the
    error names where the file is expected); other values are returned unchanged.

    Example:
        >>> resolve_data_path("DATA_DIR/medmnist_breastmnist/breastmnist.npz")  # doctest: +SKIP
        '/home/me/.cache/medlens/data/medmnist_breastmnist/breastmnist.npz'
    """
    if not value.startswith(DATA_DIR_PREFIX):
        return value
    rel = value[len(DATA_DIR_PREFIX) :]
    cands = data_dir_candidates(config_dir)
    found = next((c / rel for c in cands if (c / rel).exists()), cands[0] / rel)
    return str(found.resolve())


def _resolve_pattern(pattern: str, base: Path) -> str:
    """A local shard pattern made absolute (its folder: cwd-relative when that exists, else relative to ``base``)."""
    if "://" in pattern:
        return pattern
    folder, name = os.path.split(pattern)
    if pattern.startswith(DATA_DIR_PREFIX):  # the folder is looked up (a pattern with braces names no file)
        return os.path.join(resolve_data_path(folder, base), name) if folder.startswith(DATA_DIR_PREFIX) else resolve_data_path(pattern, base)
    if Path(pattern).is_absolute():
        return pattern
    here = Path(folder or ".")
    return os.path.join(str(here.resolve() if here.is_dir() else (base / here).resolve()), name)


def _resolve_paths(cfg: RunConfig, base: Path) -> RunConfig:
    """Make relative data paths absolute against ``base`` when the file exists there; ``DATA_DIR/`` paths are
    read below the data folder (:func:`resolve_data_path`)."""
    d = cfg.data
    for f in _PATH_FIELDS:
        if not hasattr(d, f):
            continue
        v = getattr(d, f)
        if isinstance(v, str) and v.startswith(DATA_DIR_PREFIX):
            setattr(d, f, resolve_data_path(v, base))
            continue
        if not isinstance(v, str) or not v or "://" in v or Path(v).is_absolute():
            continue
        cand = (base / v).resolve()
        # A cwd-relative path that exists wins; an hf hub name (no such file anywhere) is left alone.
        # Either way the path is made absolute, so the config saved with the run works from any folder.
        if Path(v).exists():
            setattr(d, f, str(Path(v).resolve()))
        elif cand.exists() or d.kind != "hf":
            setattr(d, f, str(cand))
    urls = getattr(d, "urls", None)  # webdataset shard patterns: relative to the YAML, DATA_DIR/ below the data folder
    for split in ("train", "val", "test") if isinstance(urls, WebDatasetUrls) else ():
        v = getattr(urls, split)
        if v is not None:
            setattr(urls, split, [_resolve_pattern(x, base) for x in v] if isinstance(v, list) else _resolve_pattern(v, base))
    url = getattr(d, "url", None)  # a relative SQLite file in a URL: relative to the YAML as well
    if isinstance(url, str) and url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        rel = url[len("sqlite:///") :]
        if rel and not rel.startswith((":memory:", "file:")):
            d.url = "sqlite:///" + str(Path(rel).resolve() if Path(rel).exists() else (base / rel).resolve())
    for src in getattr(d, "extra_sources", None) or []:  # nih: merged sources are data configs too
        for f in _PATH_FIELDS:
            v = src.get(f) if isinstance(src, dict) else None
            if isinstance(v, str) and v.startswith(DATA_DIR_PREFIX):
                src[f] = resolve_data_path(v, base)
            elif isinstance(v, str) and v and "://" not in v and not Path(v).is_absolute():
                src[f] = str(Path(v).resolve() if Path(v).exists() else (base / v).resolve())
    ck = cfg.model.checkpoint
    if ck and not Path(ck).is_absolute():
        cfg.model.checkpoint = str(Path(ck).resolve() if Path(ck).exists() else (base / ck).resolve())
    return cfg


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML text (saved with every run), passwords replaced by ``***``.

    Example:
        >>> print(dump_config(cfg))  # doctest: +SKIP
    """
    return yaml.safe_dump(cfg.redacted_dump(), sort_keys=False)
