"""Throughput of medlens against hand-written PyTorch and raw ONNX Runtime, side by side, in one run.

    python benchmarks/throughput.py [--quick]

Sections:
  1. matmul: 4096x4096 float32 GFLOP/s, the machine's practical peak.
  2. training: images/s of `medlens.train` (steady state: batches after warm-up, timed by a callback) vs a
     minimal hand-written loop on the same network, batch, image size and in-memory data; the ratio; and the
     achieved GFLOP/s (FLOPs counted by torch's FlopCounterMode) against the matmul peak. Both sides use the
     median time per batch (loading included for medlens), alternated, best of three (the hand-written loop in a
     fresh plain Python process each time, as a user's script runs): on a shared 2-core VM a
     single mean moves by +-10 % from run to run.
  3. data pipeline: decode + augment images/s in one worker for PNG, JPEG and DICOM at 64 and 224 px, and
     whether the loader or the model limits `medlens train` at 64 px with the default workers.
  4. inference: p50/p99 latency at batch 1 and images/s at batch 32 for the torch and ONNX Runtime backends of
     `Predictor`, vs a raw onnxruntime session on the same preprocessed tensors (224 px).
  5. start-up: `medlens --help`, and `medlens predict` from invocation to its first prediction.
  6. GPU (only where CUDA is available; otherwise one line says it is skipped): the hand-written loop and
     `medlens train` with AMP, channels-last and torch.compile.

Section 2 prints the defaults `medlens train` chose on this machine (trainer.precision: auto, and the memory format
that trainer.channels_last: auto measured, or took from the choices remembered in ~/.cache/medlens/probe.json) and
runs the hand-written loop with the same choices, so the ratio compares like with like; both are given as a share
of the matmul peak.

    python benchmarks/throughput.py --sizes 224 --training-only   # section 2 at 224 px alone
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MEDLENS = str(Path(sys.executable).parent / "medlens")


def pct(x: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(x) * 1000.0, q))


# ------------------------------------------------------------------------------------------------ matmul
def matmul_gflops(n: int = 4096, reps: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):  # the fastest repetition: the machine's practical peak
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


# ---------------------------------------------------------------------------------------------- training
def arch(size: int, channels: int = 3) -> dict:
    # the stock ResNet-18 stem (small_input off), as in the reference figures
    return {"type": "classifier", "backbone": "resnet18", "num_outputs": 1, "in_chans": channels, "image_size": size, "small_input": False}


def flops_per_image(size: int, batch: int = 8) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from medlens.models import create_model

    m = create_model(arch(size))
    x = torch.randn(batch, 3, size, size)
    with FlopCounterMode(display=False) as fc:
        m(x).sum().backward()
    return fc.get_total_flops() / batch


def hand_loop(size: int, batch: int, steps: int, warmup: int, device: str = "cpu", amp: str | None = None,
              channels_last: bool = False, compile: bool = False, fused: bool = False) -> float:
    """Minimal PyTorch: pre-normalised tensors in memory, AdamW, BCE; images/s over the timed steps.

    ``amp``: None (float32), ``"bf16"`` or ``"fp16"`` autocast (fp16 with a GradScaler, as Lightning does).
    """
    import torch

    from medlens.models import create_model

    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    m = create_model(arch(size)).train().to(device=device, memory_format=fmt)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, **({"fused": True} if fused else {}))
    fwd = torch.compile(m) if compile else m
    x = torch.randn(batch * 8, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = (torch.rand(batch * 8, 1, device=device) > 0.5).float()
    lossf = torch.nn.BCEWithLogitsLoss()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp or "")
    scaler = torch.amp.GradScaler(device) if amp == "fp16" else None
    cuda = device.startswith("cuda")
    times = []
    for i in range(warmup + steps):
        s = time.perf_counter()
        j = (i % 8) * batch
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            out = fwd(x[j : j + batch])
        loss = lossf(out.float(), y[j : j + batch])
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - s)
    return batch / float(np.median(times))


def hand_loop_process(size: int, batch: int, steps: int, warmup: int, **kw) -> float:
    """:func:`hand_loop` in a fresh, plain Python process: what a user's own script gets (no allocator tuning,
    which ``medlens train`` applies to its process and which would otherwise leak into this one)."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from throughput import hand_loop; "
            f"print(hand_loop({size}, {batch}, {steps}, {warmup}, **{kw!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


class StepTimer:
    """Lightning callback: wall time of train batches after a warm-up (data loading included)."""

    def __init__(self, warmup: int) -> None:
        import lightning as L

        self.warmup = warmup
        self.t0: float | None = None
        self.images = 0
        self.cb = type("_CB", (L.Callback,), {"on_train_batch_start": self._start, "on_train_batch_end": self._end})()
        self.t_end = 0.0

        self.channels_last: bool | str | None = None  # what the module ran with (after trainer.channels_last: auto)
        self.probe: dict | None = None
        self.precision: str | None = None
        self.wait = 0.0  # time between one batch's end and the next one's start: the loader (and Lightning's loop)
        self.starts: list[tuple[int, float]] = []  # (batch index, start time) of the timed batches

    def _start(self, trainer, module, batch, idx):
        now = time.perf_counter()
        if trainer.global_step == self.warmup and self.t0 is None:
            self.t0 = now
        elif self.t0 is not None and self.t_end and idx > 0:
            # a gap inside an epoch is the loader fetching the batch (plus Lightning's loop); the gap across an
            # epoch boundary is validation and checkpointing, not the loader
            self.wait += now - self.t_end
        if self.t0 is not None:
            self.starts.append((idx, now))

    def _end(self, trainer, module, outputs, batch, idx):
        self.channels_last = getattr(module, "channels_last", None)
        self.probe = getattr(module, "memory_format_probe", None)
        self.precision = str(trainer.precision)
        if self.t0 is not None:
            self.images += len(batch)
            self.t_end = time.perf_counter()

    @property
    def wait_fraction(self) -> float:
        return self.wait / (self.t_end - self.t0) if self.t0 and self.t_end > self.t0 else float("nan")

    def rate(self, batch: int) -> float:
        """Images/s from the median batch cycle (one batch's start to the next one's, inside an epoch: loading
        included). The median, like the hand-written loop's, is robust to a neighbour's burst on a shared CPU."""
        cycles = [b[1] - a[1] for a, b in zip(self.starts, self.starts[1:], strict=False) if b[0] == a[0] + 1]
        return batch / float(np.median(cycles)) if cycles else float("nan")


def medlens_train_rate(size: int, batch: int, steps: int, warmup: int, tmp: Path, data: dict | None = None, timer_out: list | None = None, **trainer_kw) -> float:
    """Steady-state images/s of ``medlens.train`` (in-memory synthetic data unless ``data`` is given)."""
    from medlens.config import config_from_dict
    from medlens.training import train

    n = batch * (steps + warmup) + 64
    data = data or {"kind": "synthetic", "num_samples": int(n / 0.7) + 1, "augment": "none", "label_names": ["a", "b"]}
    cfg = config_from_dict({
        "seed": 0,
        "data": {"image_size": size, "channels": 3, "batch_size": batch, **data},
        "model": {"backbone": "resnet18", "small_input": False},
        "optim": {"lr": 1e-3, "scheduler": "cosine"},
        "trainer": {"max_epochs": 1000, "max_steps": steps + warmup, "progress_bar": False, "calibrate": False, **trainer_kw},
        "output": {"dir": str(tmp), "name": f"tp{size}", "overwrite": True},
    })
    timer = StepTimer(warmup)
    train(cfg, callbacks=[timer.cb])
    if timer_out is not None:
        timer_out.append(timer)
    return timer.rate(batch)


def png_folder(tmp: Path, size: int, n: int) -> Path:
    """A two-class folder dataset of ``n`` smooth PNG images (what ``data.kind: folder`` reads)."""
    from PIL import Image

    rng = np.random.default_rng(1)
    root = tmp / f"folder{size}"
    for i in range(n):
        d = root / ("a" if i % 2 else "b")
        d.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 255, (8, 8, 3)).astype(np.uint8)
        Image.fromarray(base).resize((size, size), Image.BICUBIC).save(d / f"{i}.png")
    return root


# ------------------------------------------------------------------------------------------ data pipeline
def write_images(tmp: Path, size: int, n: int) -> dict[str, list[Path]]:
    from PIL import Image

    from medlens.data.io import dicom_bytes

    rng = np.random.default_rng(0)
    out: dict[str, list[Path]] = {"png": [], "jpeg": [], "dicom": []}
    for i in range(n):
        # smooth content like a radiograph (random noise would make PNG/JPEG unrealistically slow)
        base = rng.integers(0, 255, (8, 8)).astype(np.uint8)
        img = np.asarray(Image.fromarray(base).resize((size, size), Image.BICUBIC))
        p = tmp / f"{size}_{i}.png"
        Image.fromarray(img).save(p)
        out["png"].append(p)
        j = tmp / f"{size}_{i}.jpg"
        Image.fromarray(img).save(j, quality=90)
        out["jpeg"].append(j)
        d = tmp / f"{size}_{i}.dcm"
        d.write_bytes(dicom_bytes(img.astype(np.uint16) * 16))  # 12-bit, as radiographs are stored
        out["dicom"].append(d)
    return out


def pipeline_rate(paths: list[Path], size: int, augment: str = "light") -> float:
    from medlens.data.io import load_image
    from medlens.data.transforms import build_augment, make_transform, resolve_preprocessing

    pp = resolve_preprocessing(size, 3)
    tf = make_transform(pp, build_augment(augment, 3))
    for p in paths[:5]:
        tf(load_image(p))
    t0 = time.perf_counter()
    for p in paths:
        tf(load_image(p))
    return len(paths) / (time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------- inference
def inference(tmp: Path, size: int, reps: int) -> list[tuple[str, float, float, float]]:
    import onnxruntime as ort

    from medlens.bundle import Manifest, save_bundle
    from medlens.data.labels import LabelSpace
    from medlens.data.transforms import make_transform, resolve_preprocessing
    from medlens.export import export_onnx
    from medlens.inference import Predictor
    from medlens.models import create_model

    a = arch(size)
    bundle = save_bundle(create_model(a).eval(), Manifest(a, LabelSpace(("n", "p"), "binary"), resolve_preprocessing(size, 3), thresholds=[0.5]), tmp / "inf_bundle")
    onnx_dir = export_onnx(bundle, tmp / "inf_onnx")
    onnx_file = next(Path(onnx_dir).glob("*.onnx")) if Path(onnx_dir).is_dir() else Path(onnx_dir)
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(32)]
    pp = resolve_preprocessing(size, 3)
    tf = make_transform(pp)
    x1 = tf(imgs[0])[None]
    x32 = np.stack([tf(im) for im in imgs])
    rows = []

    def timeit(fn, n):
        for _ in range(3):
            fn()
        lat = []
        for _ in range(n):
            s = time.perf_counter()
            fn()
            lat.append(time.perf_counter() - s)
        return lat

    so = ort.SessionOptions()
    sess = ort.InferenceSession(str(onnx_file), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    lat1 = timeit(lambda: sess.run(None, {name: x1}), reps)
    lat32 = timeit(lambda: sess.run(None, {name: x32}), max(reps // 8, 3))
    rows.append(("raw onnxruntime session (preprocessed tensors)", pct(lat1, 50), pct(lat1, 99), 32 / np.median(lat32)))
    for backend, path in (("onnx", onnx_dir), ("torch", bundle)):
        p1 = Predictor.from_bundle(path, backend=backend, batch_size=1)
        p32 = Predictor.from_bundle(path, backend=backend, batch_size=32)
        lat1 = timeit(lambda p1=p1: p1.predict_arrays([imgs[0]]), reps)
        lat32 = timeit(lambda p32=p32: p32.predict_arrays(imgs), max(reps // 8, 3))
        rows.append((f"Predictor backend={backend} (uint8 images in)", pct(lat1, 50), pct(lat1, 99), 32 / np.median(lat32)))
    return rows


# ------------------------------------------------------------------------------------------------ start-up
def startup(tmp: Path) -> dict[str, float]:
    from PIL import Image

    from medlens.bundle import Manifest, save_bundle
    from medlens.data.labels import LabelSpace
    from medlens.data.transforms import resolve_preprocessing
    from medlens.models import create_model

    a = {"type": "classifier", "backbone": "resnet18", "num_outputs": 1, "in_chans": 1, "image_size": 28}
    b = save_bundle(create_model(a).eval(), Manifest(a, LabelSpace(("n", "p"), "binary"), resolve_preprocessing(28, 1), thresholds=[0.5]), tmp / "su_bundle")
    img = tmp / "su.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(img)
    out = {}
    for label, cmd in (("medlens --help", [MEDLENS, "--help"]), ("medlens predict (1 image)", [MEDLENS, "predict", str(b), str(img)])):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
        out[label] = min(times)
    return out


def gpu_section(tmp: Path, steps: int, warmup: int) -> None:
    """AMP, channels-last and torch.compile on a CUDA GPU: the hand-written loop and `medlens train` (224 px)."""
    import torch

    if not torch.cuda.is_available():
        print("no GPU on this machine: GPU section skipped")
        return
    print(f"{torch.cuda.get_device_name(0)}; ResNet-18, 224 px, batch 64\n")
    print("| variant | hand-written loop img/s | medlens train img/s | ratio |")
    print("|---|---:|---:|---:|")
    variants = [("float32", None, False, False, {"precision": "32", "channels_last": False}),
                ("AMP fp16", "fp16", False, False, {"precision": "16", "channels_last": False}),
                ("AMP fp16 + channels-last", "fp16", True, False, {"precision": "16", "channels_last": True}),
                ("AMP fp16 + channels-last + torch.compile", "fp16", True, True, {"precision": "16", "channels_last": True, "compile": True}),
                ("medlens defaults (precision 32, channels_last auto)", None, None, False, {})]
    for label, amp, cl, comp, kw in variants:
        try:
            timers: list = []
            ml = medlens_train_rate(224, 64, steps, warmup, tmp, timer_out=timers, accelerator="gpu", **kw)
            if cl is None:  # the hand-written loop follows what the default chose
                cl = timers[0].channels_last is True
                label += f" -> {'channels-last' if cl else 'contiguous'}"
            hand = hand_loop(224, 64, steps, warmup, device="cuda", amp=amp, channels_last=cl, compile=comp)
            print(f"| {label} | {hand:.1f} | {ml:.1f} | {ml / hand:.3f} |")
        except Exception as e:  # pragma: no cover - report, don't fail the benchmark
            print(f"| {label} | failed: {type(e).__name__}: {str(e)[:120]} | | |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps (a smoke run, not for reporting)")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="image sizes of section 2 (default 64 224; --quick: 64)")
    ap.add_argument("--training-only", action="store_true", help="sections 1 and 2 only (matmul peak and training)")
    args = ap.parse_args(argv)
    import logging
    import warnings

    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")  # Lightning's notes about logging intervals and reused folders
    import torch

    steps, warmup, reps = (8, 3, 20) if args.quick else (40, 5, 100)
    tmp = Path(tempfile.mkdtemp(prefix="medlens-tp-"))
    t_start = time.perf_counter()
    print(f"# medlens throughput ({os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads)\n")

    peak = matmul_gflops()
    print(f"## 1. matmul\n4096x4096 float32: {peak:.1f} GFLOP/s\n")

    from medlens.config import TrainerConfig
    from medlens.engine.trainer import cpu_bf16_support, precision_arg

    d = TrainerConfig()
    print("## 2. training (ResNet-18, stock stem, batch 64, in-memory data, no augmentation)\n")
    print(f"defaults on this machine: trainer.precision {d.precision!r} -> {precision_arg(d.precision, 'cpu')} "
          f"(CPU bf16 support: {cpu_bf16_support()}); "
          f"trainer.channels_last {d.channels_last!r} (measured once per machine, network and input size, below)\n")
    print("| size | memory format chosen (probe ms: contiguous / channels-last; how) | hand-written loop img/s, same choices | medlens train img/s | ratio | achieved GFLOP/s | % of matmul (medlens / hand) |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    train_rates: dict[int, float] = {}
    explain: dict[int, tuple[float, float]] = {}
    for size in args.sizes or ((64,) if args.quick else (64, 224)):
        b = 64  # at 224 px too: batch 64 is what the table says and what 224 px training commonly uses
        st = steps if size == 64 else max(steps // 4, 4)
        # alternated, best of three (two at 224 px) each, so neither side gets the warmer (or quieter) minute;
        # medlens first: the hand-written loop then uses the precision and memory format medlens chose
        hand, ml, chosen = 0.0, 0.0, None
        for _ in range(3 if size == 64 else 2):
            timers: list = []
            ml = max(ml, medlens_train_rate(size, b, st, warmup, tmp, timer_out=timers))
            chosen = timers[0]
            hand = max(hand, hand_loop_process(size, b, st, warmup, amp="bf16" if "bf16" in (chosen.precision or "") else None,
                                               channels_last=chosen.channels_last is True))
        train_rates[size] = ml
        pr = chosen.probe or {}
        how = str(pr.get("how", "-")).split(":")[0].split(",")[0]  # "probe" or "cached"
        fmt = (f"{'channels-last' if chosen.channels_last is True else 'contiguous'} ({pr.get('ms_contiguous', '-')} / "
               f"{pr.get('ms_channels_last', '-')}; {how}), {chosen.precision}")
        fl = flops_per_image(size)
        print(f"| {size} | {fmt} | {hand:.1f} | {ml:.1f} | {ml / hand:.3f} | {ml * fl / 1e9:.1f} | "
              f"{100 * ml * fl / 1e9 / peak:.0f}% / {100 * hand * fl / 1e9 / peak:.0f}% |")
        # where the lead comes from: the same hand-written loop in this process, whose allocator medlens train has
        # tuned (trainer.tune_allocator), with torch's default AdamW and with the fused one medlens uses
        same = {"amp": "bf16" if "bf16" in (chosen.precision or "") else None, "channels_last": chosen.channels_last is True}
        explain[size] = (hand_loop(size, b, st, warmup, **same), hand_loop(size, b, st, warmup, fused=True, **same))
    print("\nThe hand-written loop runs in a fresh plain Python process, as a user's script would; in this process "
          "(allocator tuned by medlens train) it gives:\n")
    for size, (tuned, fused) in explain.items():
        print(f"- {size} px: tuned allocator {tuned:.1f} img/s, tuned allocator + fused AdamW {fused:.1f} img/s "
              f"(medlens train {train_rates[size]:.1f})")
    if args.training_only or 64 not in train_rates:
        print(f"\ntotal benchmark time: {time.perf_counter() - t_start:.0f} s")
        return 0
    try:
        ml_cl = medlens_train_rate(64, 64, steps, warmup, tmp, channels_last=True)
        print(f"\nchannels_last forced (true) at 64 px: {ml_cl:.1f} img/s ({ml_cl / train_rates[64]:.2f}x the default, auto)")
    except Exception as e:  # pragma: no cover - report, don't fail the benchmark
        print(f"\nchannels_last at 64 px: failed ({e})")
    try:
        ml_bf = medlens_train_rate(64, 64, steps, warmup, tmp, precision="bf16")
        print(f"bf16 autocast at 64 px: {ml_bf:.1f} img/s ({ml_bf / train_rates[64]:.2f}x the default)")
    except Exception as e:  # pragma: no cover
        print(f"bf16 autocast at 64 px: failed ({e})")

    print("\n## 3. data pipeline (decode + light augmentation + normalise, one worker)\n")
    print("| format | 64 px img/s | 224 px img/s |")
    print("|---|---:|---:|")
    n = 60 if args.quick else 300
    files = {s: write_images(tmp, s, n) for s in (64, 224)}
    rates = {}
    for fmt in ("png", "jpeg", "dicom"):
        r64, r224 = pipeline_rate(files[64][fmt], 64), pipeline_rate(files[224][fmt], 224)
        rates[fmt] = r64
        print(f"| {fmt} | {r64:.0f} | {r224:.0f} |")
    slowest = min(rates.values())
    print(f"\nOne worker decodes and augments >= {slowest:.0f} img/s at 64 px (slowest format); the model trains "
          f"{train_rates[64]:.0f} img/s.")
    # the real thing: `medlens train` on PNG files with the default loader settings (cache: auto, workers: auto,
    # light augmentation), timing how long each step waits for its batch
    timers: list = []
    # enough images that the timed steps fall in one epoch (70 % of the rows train)
    folder = png_folder(tmp, 64, int(64 * (steps + warmup) / 0.7) + 64)
    rate = medlens_train_rate(64, 64, steps, warmup, tmp, data={"kind": "folder", "root": str(folder), "augment": "light"}, timer_out=timers)
    wf = timers[0].wait_fraction
    print(f"`medlens train` on 64 px PNG files, default loader (cache auto, workers auto), light augmentation: "
          f"{rate:.0f} img/s; steps wait for data {100 * wf:.1f}% of the time, so the "
          f"{'loader' if wf > 0.10 else 'model'} is the bottleneck.")

    print("\n## 4. inference (ResNet-18, 224 px, 3 channels)\n")
    print("| path | p50 ms (batch 1) | p99 ms (batch 1) | img/s (batch 32) |")
    print("|---|---:|---:|---:|")
    rows = inference(tmp, 224, reps)
    for r in rows:
        print(f"| {r[0]} | {r[1]:.2f} | {r[2]:.2f} | {r[3]:.1f} |")
    print(f"\nPredictor(onnx) p50 / raw session p50 = {rows[1][1] / rows[0][1]:.2f} (target <= 1.2)")

    print("\n## 5. start-up\n")
    for k, v in startup(tmp).items():
        print(f"- {k}: {v:.2f} s")
    print("\n## 6. GPU\n")
    gpu_section(tmp, steps, warmup)
    print(f"\ntotal benchmark time: {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
