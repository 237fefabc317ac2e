"""The Kermany 224 px chest X-ray recipe: candidates chosen on validation, test read once, published figures beside.

    python benchmarks/kermany.py                       # candidates on seed 0, then seeds 1 2 of the winner, test once
    python benchmarks/kermany.py --candidates "resnet18 128"   # train only these candidates
    python benchmarks/kermany.py --quick               # 1 epoch, 400 rows: checks that it runs

Every run is ``medlens.train`` on ``configs/kermany_224.yaml`` with the candidate's overrides, on the official
train/test split of ``../shared/data/kermany_chestxray_224`` (validation carved from train by patient through
``data.group_pattern``). The test rows are removed from every run's splits while choosing (``train(cfg, splits=...)``
with an empty test split), so no test figure exists until the choice is made: the winner is the candidate with the
highest validation AUROC on the choice seed; its other seeds are trained after the choice; then
``medlens.evaluate(bundle, split="test")`` reads the test split once per seed of the winner, at the threshold each
bundle deployed (chosen on validation).

The budget: each candidate is sized to <= 30 minutes of wall time on the 2-core development CPU. Wall time and the
CPU time of the process and its data-loader workers are both printed.

Published on this test split (Kermany et al., Cell 2018; ImageNet-pretrained Inception v3, transfer learning):
accuracy 92.8 %, sensitivity 93.2 %, specificity 90.1 %, AUROC 0.968. The 28 px figure beside it is
PneumoniaMNIST (the same images at 28 px, a different split) from ``benchmarks/medmnist.py --select``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "kermany_224.yaml"

#: candidates: name -> overrides on configs/kermany_224.yaml, fixed before any run. Each is sized to the 30-minute
#: budget on 2 cores, measured as train-step throughput before the selection (fp32; this CPU has no bf16 units):
#: ResNet-18 at 224 px trains 5.6 images/s (13 min an epoch, 2 epochs in budget), at 128 px 15.3 images/s;
#: MobileNetV3-Large at 224 px 17.2 images/s.
CANDIDATES: dict[str, list[str]] = {
    "resnet18 128": ["model.backbone=resnet18", "data.image_size=128", "trainer.max_epochs=4"],
    "mobilenetv3 224": ["model.backbone=mobilenetv3_large_100", "data.image_size=224", "trainer.max_epochs=4"],
    # added 2026-12-05 for a CPU with AVX-512, where "resnet18 128" took 3.6 min (float32: no AMX, so auto is 32):
    # sized from its ~45 s an epoch to <= ~15 wall-minutes (~30 CPU-minutes) each, before any of them ran
    "resnet18 224": ["model.backbone=resnet18", "data.image_size=224", "trainer.max_epochs=6"],
    "resnet18 160 strong": ["model.backbone=resnet18", "data.image_size=160", "trainer.max_epochs=10", "data.augment=strong"],
    "resnet18 128 strong": ["model.backbone=resnet18", "data.image_size=128", "trainer.max_epochs=12", "data.augment=strong"],
}
#: a candidate whose choice-seed run took longer than this (wall minutes) cannot be chosen (the issue's budget)
BUDGET_MIN = 30
PUBLISHED = {"name": "Kermany et al. 2018, Inception v3 ImageNet transfer (published)",
             "auroc": 0.968, "accuracy": 0.928, "sensitivity": 0.932, "specificity": 0.901}
#: PneumoniaMNIST (28 px) test figures of the shipped config, chosen on validation (benchmarks/README.md)
PNEUMONIAMNIST_28 = {"name": "medlens PneumoniaMNIST 28 px, 3 seeds (different split)", "auroc": "0.968 ± 0.002",
                     "accuracy": "0.876 ± 0.016"}


def _shared_data(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("MEDLENS_SHARED_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def _cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _val_only(cfg):
    """The config's table and splits with the test rows removed: nothing can be measured on test."""
    import numpy as np

    from medlens.data.splits import Splits
    from medlens.training import prepare_data

    table, sp = prepare_data(cfg)
    return table, Splits(sp.train, sp.val, np.zeros(0, dtype=np.int64), sp.method, [*sp.notes, "test rows withheld for selection"])


def _rate(m: dict, key: str) -> float:
    v = m.get(key, m.get(f"{key}_macro"))
    return float("nan") if v is None else float(v)


def select(seeds: list[int], choose_seed: int, data_dir: Path, out_dir: Path, quick: bool, only: list[str] | None) -> dict:
    from medlens.config import load_config
    from medlens.evaluation import evaluate
    from medlens.training import train

    cands = {k: v for k, v in CANDIDATES.items() if not only or k in only}
    if only and (unknown := [n for n in only if n not in CANDIDATES]):
        raise SystemExit(f"unknown candidate {unknown[0]!r}; valid: {', '.join(CANDIDATES)}")
    base = [f"data.root={data_dir / 'kermany_chestxray_224'}", f"output.dir={out_dir}", "output.overwrite=true",
            "trainer.progress_bar=false"]
    if quick:
        base += ["data.max_samples=400"]
    runs: dict[str, list[dict]] = {}

    def run(name: str, seed: int) -> None:
        over = [*base, *cands[name], f"seed={seed}", f"output.name=kermany-{name.replace(' ', '_')}-s{seed}"]
        if quick:
            over.append("trainer.max_epochs=1")
        cfg = load_config(CONFIG, over)
        t0, c0 = time.perf_counter(), _cpu_s()
        table, splits = _val_only(cfg)
        res = train(cfg, splits=splits, table=table)
        assert "test" not in res.metrics  # the protocol's invariant
        val = res.metrics["val"]
        runs.setdefault(name, []).append({
            "seed": seed, "val_auroc": float(val["auroc_macro"]), "bundle": str(res.bundle_dir), "config": cfg,
            "wall_s": time.perf_counter() - t0, "cpu_s": _cpu_s() - c0, "epochs": len(res.history),
            "n_train": int(len(splits.train)), "n_val": int(len(splits.val))})
        r = runs[name][-1]
        print(f"kermany {name} seed {seed}: val AUROC {r['val_auroc']:.4f} ({r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} s CPU, "
              f"{r['n_train']} train / {r['n_val']} val)", flush=True)

    for name in cands:
        run(name, choose_seed)
    eligible = [k for k in runs if runs[k][0]["wall_s"] <= BUDGET_MIN * 60] or list(runs)
    chosen = max(eligible, key=lambda k: runs[k][0]["val_auroc"])
    val_at_choice = {k: runs[k][0]["val_auroc"] for k in runs}
    print(f"kermany: chose {chosen!r} on validation", flush=True)
    for seed in seeds:
        if seed != choose_seed:
            run(chosen, seed)
    final = sorted((r for r in runs[chosen] if r["seed"] in seeds), key=lambda r: r["seed"])
    tests = []
    for r in final:  # the test split, read once per bundle of the chosen candidate
        m = evaluate(r["bundle"], r["config"], split="test", record=False).metrics
        tests.append({"auroc": float(m["auroc_macro"]), "accuracy": float(m["accuracy"]),
                      "sensitivity": _rate(m, "sensitivity"), "specificity": _rate(m, "specificity"), "n": int(m["n"])})
    return {"chosen": chosen, "candidates": cands, "choose_seed": choose_seed, "val_at_choice": val_at_choice,
            "cand": {k: {"wall_s": v[0]["wall_s"], "cpu_s": v[0]["cpu_s"], "epochs": v[0]["epochs"]} for k, v in runs.items()},
            "final": [{k: v for k, v in r.items() if k != "config"} for r in final], "test": tests}


def finish(out_dir: Path, log_file: Path, seeds: list[int], choose_seed: int) -> dict:
    """Complete a selection that was stopped after some runs: the choice and the test read once, from what exists.

    The runs' validation figures and times come from the lines ``select`` printed (``log_file``), their bundles from
    ``out_dir``; the choice is made from the choice-seed lines exactly as ``select`` makes it, and the test split is
    read once per finished seed of the winner (the seeds that did not finish are left out, and the table says so).
    """
    import re

    from medlens.config import config_from_dict
    from medlens.evaluation import evaluate

    pat = re.compile(r"^kermany (.+) seed (\d+): val AUROC ([0-9.]+) \((\d+) s wall, (\d+) s CPU, (\d+) train / (\d+) val\)")
    runs: dict[str, list[dict]] = {}
    for line in log_file.read_text().splitlines():
        if m := pat.match(line):
            name, seed = m.group(1), int(m.group(2))
            bundle = out_dir / f"kermany-{name.replace(' ', '_')}-s{seed}" / "bundle"
            runs.setdefault(name, []).append({"seed": seed, "val_auroc": float(m.group(3)), "bundle": str(bundle),
                                              "wall_s": float(m.group(4)), "cpu_s": float(m.group(5)), "epochs": None,
                                              "n_train": int(m.group(6)), "n_val": int(m.group(7))})
    first = {k: next(r for r in v if r["seed"] == choose_seed) for k, v in runs.items() if any(r["seed"] == choose_seed for r in v)}
    chosen = max(first, key=lambda k: first[k]["val_auroc"])
    final = sorted((r for r in runs[chosen] if r["seed"] in seeds), key=lambda r: r["seed"])
    tests = []
    for r in final:  # the test split, read once per bundle of the chosen candidate
        from medlens.bundle import read_manifest

        cfg = config_from_dict(read_manifest(r["bundle"]).config)
        m = evaluate(r["bundle"], cfg, split="test", record=False).metrics
        tests.append({"auroc": float(m["auroc_macro"]), "accuracy": float(m["accuracy"]),
                      "sensitivity": _rate(m, "sensitivity"), "specificity": _rate(m, "specificity"), "n": int(m["n"])})
    return {"chosen": chosen, "candidates": {k: v for k, v in CANDIDATES.items() if k in first}, "choose_seed": choose_seed,
            "val_at_choice": {k: v["val_auroc"] for k, v in first.items()},
            "cand": {k: {"wall_s": v["wall_s"], "cpu_s": v["cpu_s"], "epochs": None} for k, v in first.items()},
            "final": final, "test": tests, "missing_seeds": [s for s in seeds if s not in {r["seed"] for r in final}]}


def _ms(xs: list[float], digits: int = 3) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


def report(res: dict) -> str:
    lines = [f"### Kermany 224: candidates on validation (seed {res['choose_seed']}), test read once for the chosen one", "",
             "| candidate | overrides | val AUROC | wall / CPU time |", "|---|---|---|---|"]
    for name, v in res["val_at_choice"].items():
        label = f"**{name}** (chosen)" if name == res["chosen"] else name
        c = res["cand"][name]
        lines.append(f"| {label} | {' '.join(res['candidates'][name])} | {v:.4f} | {c['wall_s'] / 60:.1f} / {c['cpu_s'] / 60:.1f} min |")
    t, f = res["test"], res["final"]
    lines += ["", "| model | test AUROC | accuracy | sensitivity | specificity | wall / CPU time per run |", "|---|---|---|---|---|---|",
              f"| **medlens {res['chosen']}** ({len(t)} seeds, mean ± sd, deployed threshold) | "
              f"**{_ms([x['auroc'] for x in t])}** | **{_ms([x['accuracy'] for x in t])}** | {_ms([x['sensitivity'] for x in t])} | "
              f"{_ms([x['specificity'] for x in t])} | {statistics.mean(r['wall_s'] for r in f) / 60:.1f} / "
              f"{statistics.mean(r['cpu_s'] for r in f) / 60:.1f} min |"]
    for r, x in zip(f, t, strict=True):
        lines.append(f"| ... seed {r['seed']} (val AUROC {r['val_auroc']:.4f}) | {x['auroc']:.3f} | {x['accuracy']:.3f} | "
                     f"{x['sensitivity']:.3f} | {x['specificity']:.3f} | {r['wall_s'] / 60:.1f} / {r['cpu_s'] / 60:.1f} min |")
    p = PUBLISHED
    lines.append(f"| {p['name']} | {p['auroc']:.3f} | {p['accuracy']:.3f} | {p['sensitivity']:.3f} | {p['specificity']:.3f} | — |")
    q = PNEUMONIAMNIST_28
    lines.append(f"| {q['name']} | {q['auroc']} | {q['accuracy']} | | | |")
    m_auc = statistics.mean(x["auroc"] for x in t)
    m_acc = statistics.mean(x["accuracy"] for x in t)
    slow = max(r["wall_s"] for r in f) / 60
    verdict = ("reached" if m_auc > p["auroc"] and m_acc > p["accuracy"] and slow <= 30 else "not reached")
    if res.get("missing_seeds"):
        lines += ["", f"Seeds {', '.join(map(str, res['missing_seeds']))} of the chosen config were not run (stopped for time)."]
    lines += ["", f"Aim (AUROC > {p['auroc']}, accuracy > {p['accuracy']}, <= 30 min a run): **{verdict}** "
              f"(AUROC {m_auc - p['auroc']:+.3f}, accuracy {m_acc - p['accuracy']:+.3f}, slowest run {slow:.1f} min); "
              f"n test = {t[0]['n']}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--choose-seed", type=int, default=0)
    ap.add_argument("--candidates", nargs="+", default=None)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=None, help="where runs go (default: a temporary folder, removed)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--finish", nargs=2, metavar=("OUT", "LOG"), default=None,
                    help="complete a stopped selection: the runs in OUT, their printed lines in LOG; test read once")
    a = ap.parse_args(argv)
    data_dir = _shared_data(a.data_dir)
    if not (data_dir / "kermany_chestxray_224" / "train").is_dir():
        print(f"kermany_chestxray_224 not found under {data_dir} (set --data-dir or MEDLENS_SHARED_DATA)", file=sys.stderr)
        return 2
    if a.finish:
        res = finish(Path(a.finish[0]), Path(a.finish[1]), a.seeds, a.choose_seed)
        print(report(res))
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=2, default=str))
        return 0
    with tempfile.TemporaryDirectory(prefix="medlens-kermany-") as tmp:
        out = Path(a.out) if a.out else Path(tmp)
        res = select(a.seeds, a.choose_seed, data_dir, out, a.quick, a.candidates)
        print(report(res))
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
