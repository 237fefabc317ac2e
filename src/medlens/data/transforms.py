"""Preprocessing (one function for train, evaluate, predict, explain, export and serve) and augmentation.

:class:`Preprocessing` is stored in every bundle's manifest. :func:`make_transform` builds the callable that
turns a decoded uint8 image into a normalised ``float32`` (C, H, W) array; training passes an augmentation
preset, everything else passes none. Nothing else in medlens resizes or normalises images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import cv2
import numpy as np

#: the smallest per-channel standard deviation a manifest may carry ([0, 1] units; real ones are ~0.2-0.3)
MIN_STD = 1e-6

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input: size, channels and normalisation (in [0, 1] units)."""

    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        """Read a manifest's ``preprocessing``, refusing what would give non-finite or unbounded model inputs.

        ``image_size`` is an integer in 8..4096 and ``channels`` 1 or 3 (as ``data.image_size`` / ``data.channels``);
        ``mean`` and ``std`` hold one finite number per channel, and every ``std`` is at least
        :data:`MIN_STD` (a zero std divides by zero: inputs of inf/NaN, scores of NaN).

        Raises:
            ValueError: one line naming the field, e.g. ``preprocessing.std[0]: 0.0 ...``.

        Example:
            >>> Preprocessing.from_dict({"image_size": 28, "channels": 1, "mean": [0.5], "std": [0]})
            Traceback (most recent call last):
            ...
            ValueError: preprocessing.std[0]: 0 is not a usable standard deviation (finite, at least 1e-06)
        """
        if not isinstance(d, dict):
            raise ValueError(f"preprocessing: expected an object, got {type(d).__name__}")
        missing = [k for k in ("image_size", "channels", "mean", "std") if k not in d]
        if missing:
            raise ValueError(f"preprocessing: missing field {missing[0]!r}")
        size, channels = d["image_size"], d["channels"]
        if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 4096:
            raise ValueError(f"preprocessing.image_size: expected an integer in 8..4096, got {str(size)[:40]}")
        if isinstance(channels, bool) or channels not in (1, 3):
            raise ValueError(f"preprocessing.channels: expected 1 (grey) or 3 (colour), got {str(channels)[:40]}")
        stats = {}
        for name in ("mean", "std"):
            vals = d[name]
            if not isinstance(vals, (list, tuple)) or len(vals) != channels:
                raise ValueError(f"preprocessing.{name}: expected {channels} numbers (one per channel), got {str(vals)[:60]}")
            for i, v in enumerate(vals):
                ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
                if not ok or (name == "std" and v < MIN_STD):
                    what = "a usable standard deviation (finite, at least 1e-06)" if name == "std" else "a finite number"
                    raise ValueError(f"preprocessing.{name}[{i}]: {str(v)[:40]} is not {what}")
            stats[name] = tuple(float(v) for v in vals)
        return cls(size, channels, stats["mean"], stats["std"])


def resolve_preprocessing(image_size: int, channels: int, mean: list[float] | None = None, std: list[float] | None = None) -> Preprocessing:
    """Defaults: ImageNet statistics for 3 channels, 0.5/0.5 for grey (the MedMNIST convention)."""
    if mean is None:
        mean = list(IMAGENET_MEAN) if channels == 3 else [0.5]
    if std is None:
        std = list(IMAGENET_STD) if channels == 3 else [0.5]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean/std need {channels} values, got {len(mean)}/{len(std)}")
    for name, vals in (("mean", mean), ("std", std)):
        for i, v in enumerate(vals):
            if not math.isfinite(float(v)) or (name == "std" and float(v) < MIN_STD):
                raise ValueError(f"data.{name}[{i}]: {v} is not " + ("a usable standard deviation (finite, at least 1e-06)"
                                                                      if name == "std" else "a finite number"))
    return Preprocessing(int(image_size), int(channels), tuple(float(m) for m in mean), tuple(float(s) for s in std))


def preprocessing_from_config(data_cfg) -> Preprocessing:
    return resolve_preprocessing(data_cfg.image_size, data_cfg.channels, data_cfg.mean, data_cfg.std)


def to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (H, W) or (H, W, C) -> (H, W, channels)."""
    if img.ndim == 2:
        img = img[:, :, None]
    c = img.shape[2]
    if c == channels:
        return img
    if channels == 1:
        if c == 4:
            img = img[:, :, :3]
        return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)[:, :, None] if img.shape[2] == 3 else img[:, :, :1]
    if c == 1:
        return np.repeat(img, 3, axis=2)
    if c == 4:
        return img[:, :, :3]
    raise ValueError(f"cannot convert an image with {c} channels to {channels}")


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """Resize (H, W, C) uint8 to (size, size, C): area filter when shrinking, bilinear when enlarging."""
    h, w = img.shape[:2]
    if h == size and w == size:
        return img
    interp = cv2.INTER_AREA if (h > size or w > size) else cv2.INTER_LINEAR
    out = cv2.resize(img, (size, size), interpolation=interp)
    return out[:, :, None] if out.ndim == 2 else out


def geometry(img: np.ndarray, pp: Preprocessing) -> np.ndarray:
    """Channels and size: the deterministic part of preprocessing (uint8 in, uint8 out)."""
    return resize(to_channels(img, pp.channels), pp.image_size)


def normalize(img: np.ndarray, pp: Preprocessing) -> np.ndarray:
    """uint8 (H, W, C) -> float32 (C, H, W), scaled to [0, 1] then standardised."""
    # (x / 255 - mean) / std as one scale and one offset per channel, on a channels-first copy made while the
    # data is still uint8: two in-place passes over float32 instead of five (0.1 ms vs 1.5 ms at 224x224x3)
    std = np.asarray(pp.std, dtype=np.float32)
    scale = (1.0 / (255.0 * std))[:, None, None]
    offset = (np.asarray(pp.mean, dtype=np.float32) / std)[:, None, None]
    x = np.ascontiguousarray(img.transpose(2, 0, 1)).astype(np.float32)
    x *= scale
    x -= offset
    return x


class SeededAugment:
    """An albumentations pipeline whose randomness comes from torch's global generator.

    albumentations 2 keeps a private generator per pipeline, seeded from OS entropy, so neither
    ``seed_everything`` nor a resumed run could reproduce its draws, and DataLoader workers would all share one
    stream. Each call here reseeds the pipeline from ``torch.randint``, which the task module reseeds from
    ``(seed, epoch)`` at every epoch start and torch seeds per worker: augmentation is reproducible, differs
    between workers, and a resumed run continues exactly (with in-process loading, ``num_workers: 0``).

    Example:
        >>> import torch
        >>> aug = build_augment("light", channels=1)
        >>> img = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28, 1)
        >>> _ = torch.manual_seed(0); a = aug(image=img)["image"]
        >>> _ = torch.manual_seed(0); bool((a == aug(image=img)["image"]).all())
        True
    """

    def __init__(self, compose) -> None:
        import random

        self.compose = compose
        # One generator pair, reseeded in place per call (building new ones costs ~0.1 ms an image).
        self._bitgen = np.random.PCG64(0)
        self._np = np.random.Generator(self._bitgen)
        self._py = random.Random(0)
        compose.set_random_state(self._np, self._py)

    def __call__(self, image: np.ndarray, seed: int | None = None) -> dict:
        """Augment one image; ``seed`` (from the sample's epoch and row, see ``EpochSampler``) fixes the draws.

        Without a seed the draws come from torch's global generator. With one they depend on nothing else, so
        a sample is augmented the same way whichever data-loader worker reads it and whether or not the run was
        resumed (workers' own generators continue differently after a restart).
        """
        if seed is None:
            import torch

            a, b = (int(v) for v in torch.randint(0, 2**62, (2,)))
        else:
            a, b = (int(v) >> 2 for v in np.random.SeedSequence(int(seed) & (2**64 - 1)).generate_state(2, np.uint64))
        self._bitgen.state = {"bit_generator": "PCG64", "state": {"state": a, "inc": 2 * b + 1}, "has_uint32": 0, "uinteger": 0}
        self._py.seed(a)
        return self.compose(image=image)

    def __repr__(self) -> str:
        return f"SeededAugment({self.compose!r})"


class SeededTorchvision:
    """A ``torchvision.transforms.v2`` pipeline with :class:`SeededAugment`'s calling convention and seeding.

    Images go in and out as uint8 (H, W, C) arrays; inside they are float (C, H, W) in [0, 1] and clamped back.
    Without a seed the draws come from torch's global generator (reseeded per epoch by the task module); with one
    they come from a forked generator seeded with it, so the global stream is left as it was.
    """

    def __init__(self, compose) -> None:
        self.compose = compose

    def __call__(self, image: np.ndarray, seed: int | None = None) -> dict:
        import torch

        grey2d = image.ndim == 2
        x = torch.from_numpy(np.ascontiguousarray(image[:, :, None] if grey2d else image)).permute(2, 0, 1).float().div_(255.0)
        if seed is None:
            y = self.compose(x)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed) & (2**63 - 1))
                y = self.compose(x)
        out = y.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8).permute(1, 2, 0).numpy()
        return {"image": out[:, :, 0] if grey2d else out}

    def __repr__(self) -> str:
        return f"SeededTorchvision({self.compose!r})"


#: ``data.augment_backend`` choices: the libraries the presets are written in.
AUGMENT_BACKENDS = ("albumentations", "torchvision")


def build_augment(preset: str, channels: int, color: bool | None = None,
                  backend: str = "albumentations") -> SeededAugment | SeededTorchvision | None:
    """An augmentation pipeline on uint8 (H, W, C) at the model's size, or None for ``none``.

    * ``light``: small affine (scale 0.9-1.1, shift 6 %, rotate 10 deg, p 0.7) and mild brightness/contrast
      (10 %, p 0.5).
    * ``strong``: horizontal flip, larger affine (scale 0.8-1.2, shift 10 %, rotate 20 deg, p 0.8),
      brightness/contrast (20 %, p 0.7), blur or noise (p 0.3), cut-out holes (p 0.3).
    Colour jitter is applied only to 3-channel images (never to grey X-rays) unless ``color`` says otherwise.
    Every preset keeps intensities in range (uint8 0-255, the input's shape) and never flips vertically (anatomy
    has an up and a down). On a uniform mid-grey image the ``light`` preset keeps every pixel the affine does not
    move in from outside within 25 % of its value, with either backend.

    ``backend``: ``albumentations`` (reflected borders) or ``torchvision`` (``transforms.v2``: the same ranges and
    probabilities; borders the affine uncovers are filled with black, brightness is a factor rather than a shift,
    cut-out is one erased rectangle, noise has a fixed 0.05 sigma).

    Args:
        preset: ``none``, ``light`` or ``strong``.
        channels: 1 (grey) or 3 (colour).
        color: force colour jitter on (True) or off (False); None: only for 3-channel images.
        backend: ``albumentations`` or ``torchvision``.

    Returns:
        A callable ``aug(image=uint8 array, seed=None) -> {"image": array}`` (see :class:`SeededAugment`), or None.

    Example:
        >>> build_augment("none", 1) is None
        True
    """
    if backend not in AUGMENT_BACKENDS:
        raise ValueError(f"data.augment_backend: unknown backend {backend!r}; valid: {', '.join(AUGMENT_BACKENDS)}")
    if preset == "none":
        return None
    if preset not in ("light", "strong"):
        raise ValueError(f"unknown augmentation preset {preset!r}; valid: none, light, strong")
    use_color = (channels == 3) if color is None else color
    if backend == "torchvision":
        return _torchvision_augment(preset, channels, use_color)
    import albumentations as A

    use_color = (channels == 3) if color is None else color
    if preset == "light":
        ops = [
            A.Affine(scale=(0.9, 1.1), translate_percent=(-0.06, 0.06), rotate=(-10, 10), border_mode=cv2.BORDER_REFLECT_101, p=0.7),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        ]
    elif preset == "strong":
        ops = [
            A.HorizontalFlip(p=0.5),
            A.Affine(scale=(0.8, 1.2), translate_percent=(-0.1, 0.1), rotate=(-20, 20), border_mode=cv2.BORDER_REFLECT_101, p=0.8),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.7),
            A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.GaussNoise(std_range=(0.02, 0.08))], p=0.3),
            A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.15), hole_width_range=(0.05, 0.15), p=0.3),
        ]
    else:
        raise ValueError(f"unknown augmentation preset {preset!r}; valid: none, light, strong")
    if use_color and channels == 3:
        ops.append(A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=15, val_shift_limit=10, p=0.5))
    return SeededAugment(A.Compose(ops))


def _torchvision_augment(preset: str, channels: int, use_color: bool) -> SeededTorchvision:
    """The presets of :func:`build_augment` in ``torchvision.transforms.v2`` (float images in [0, 1])."""
    from torchvision.transforms import v2 as T

    if preset == "light":
        ops = [
            T.RandomApply([T.RandomAffine(degrees=10, translate=(0.06, 0.06), scale=(0.9, 1.1))], p=0.7),
            T.RandomApply([T.ColorJitter(brightness=0.1, contrast=0.1)], p=0.5),
        ]
    else:
        ops = [
            T.RandomHorizontalFlip(p=0.5),
            T.RandomApply([T.RandomAffine(degrees=20, translate=(0.1, 0.1), scale=(0.8, 1.2))], p=0.8),
            T.RandomApply([T.ColorJitter(brightness=0.2, contrast=0.2)], p=0.7),
            T.RandomApply([T.RandomChoice([T.GaussianBlur(kernel_size=5, sigma=(0.5, 1.2)), T.GaussianNoise(sigma=0.05, clip=True)])], p=0.3),
            T.RandomErasing(p=0.3, scale=(0.0025, 0.0225), ratio=(0.33, 3.0), value=0.0),
        ]
    if use_color and channels == 3:
        ops.append(T.RandomApply([T.ColorJitter(brightness=0.1, saturation=0.15, hue=8 / 360)], p=0.5))
    return SeededTorchvision(T.Compose(ops))


def make_transform(pp: Preprocessing, augment=None) -> Callable[[np.ndarray], np.ndarray]:
    """The one image -> model-input function.

    Args:
        pp: preprocessing from the config or a bundle manifest.
        augment: an augmentation pipeline from :func:`build_augment` (training only), or None.

    Returns:
        A function: uint8 (H, W) / (H, W, C) -> float32 (C, size, size); its optional ``seed`` fixes the
        augmentation's draws for this one image.

    Example:
        >>> pp = resolve_preprocessing(28, 1)
        >>> make_transform(pp)(np.zeros((32, 32), np.uint8)).shape
        (1, 28, 28)
    """

    def transform(img: np.ndarray, seed: int | None = None) -> np.ndarray:
        x = geometry(img, pp)
        if augment is not None:
            x = (augment(image=x) if seed is None else augment(image=x, seed=seed))["image"]
            if x.ndim == 2:
                x = x[:, :, None]
        return normalize(x, pp)

    return transform


def preprocess_images(images: list[np.ndarray], pp: Preprocessing) -> np.ndarray:
    """Batch version for inference: list of uint8 images -> float32 (N, C, H, W)."""
    t = make_transform(pp)
    return np.stack([t(im) for im in images]) if images else np.zeros((0, pp.channels, pp.image_size, pp.image_size), np.float32)
