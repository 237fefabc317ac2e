"""The shipped MedMNIST configs against the published MedMNIST v2 baselines, over several seeds.

    python benchmarks/medmnist.py                          # both datasets, seeds 0 1 2 (the figures to report)
    python benchmarks/medmnist.py --datasets pneumoniamnist --seeds 0
    python benchmarks/medmnist.py --quick                  # 1 epoch, 1 seed: checks that the benchmark runs

Each run is ``medlens.train`` on ``configs/<dataset>.yaml`` exactly as a user would start it (``medlens train
configs/pneumoniamnist.yaml --set seed=1``), on the official train/val/test split of the ``.npz`` in
``../shared/data`` (or ``--data-dir``). The checkpoint and thresholds are chosen on validation; the figures are
on the test split. Wall time is the whole run: data loading, training, calibration, threshold tuning, test
evaluation and writing the bundle.

Published MedMNIST v2 test figures (Yang et al., Scientific Data 2023, Table 3) are printed beside ours.

Selection mode (choices on validation only; the test split is read ONCE, for the chosen config)::

    python benchmarks/medmnist.py --select                 # compare CANDIDATES on validation, then test the winner
    python benchmarks/medmnist.py --select --with-pretrain # also a candidate fine-tuned from `medlens pretrain` weights
    python benchmarks/medmnist.py --select --choose-seeds 0  # choose on seed 0, then seeds 1 2 of the winner
    python benchmarks/medmnist.py --select --validation-only --seeds 1 2 --candidates "lr 1e-3"
                                                           # more seeds of some candidates: validation only, no test
    python benchmarks/medmnist.py --select --quick         # 1 epoch, 1 seed, 600 rows: checks that it runs

Every candidate is trained with the test rows removed from its splits (``train(cfg, splits=...)`` with an empty
test split), so no test metric exists while choosing; the winner is the highest mean validation AUROC over the
seeds; then ``medlens.evaluate(bundle, split="test")`` reads the test split once per seed of the winner only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# dataset -> (config, .npz path under the shared data folder)
DATASETS = {
    "pneumoniamnist": ("configs/pneumoniamnist.yaml", "medmnist_pneumoniamnist/pneumoniamnist.npz"),
    "breastmnist": ("configs/breastmnist.yaml", "medmnist_breastmnist/breastmnist.npz"),
}

# published test AUC / ACC (None: not published)
PUBLISHED = {
    "pneumoniamnist": [
        ("ResNet-18 (28)", 0.944, 0.854),
        ("ResNet-50 (224)", 0.962, 0.884),
        ("Google AutoML Vision", 0.991, 0.946),
    ],
    "breastmnist": [
        ("ResNet-18 (28)", 0.901, 0.863),
        ("ResNet-50 (224)", 0.866, 0.842),
        ("Google AutoML Vision", 0.919, None),
    ],
}
# the official MedMNIST experiments script measured on this CPU (issue 3): 2 epochs, 212 s
REFERENCE_RUN = {"pneumoniamnist": ("MedMNIST script, ResNet-18 (28), 2 epochs, this CPU", 0.958, 0.870, 212.0)}


def _shared_data(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("MEDLENS_SHARED_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def run_one(dataset: str, seed: int, data_dir: Path, out_dir: Path, quick: bool) -> dict:
    from medlens.config import load_config
    from medlens.training import train

    config, rel = DATASETS[dataset]
    overrides = [f"seed={seed}", f"data.path={data_dir / rel}", f"output.dir={out_dir}",
                 f"output.name={dataset}-s{seed}", "output.overwrite=true", "trainer.progress_bar=false"]
    if quick:
        overrides += ["trainer.max_epochs=1"]
    cfg = load_config(ROOT / config, overrides)
    t0 = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - t0
    test = result.metrics["test"]
    return {"dataset": dataset, "seed": seed, "auroc": float(test["auroc_macro"]), "accuracy": float(test["accuracy"]),
            "wall_s": wall, "train_s": result.train_time_s, "epochs": len(result.history),
            "weights": json.loads((result.bundle_dir / "manifest.json").read_text()).get("weights_source", "raw")}


#: candidate configs for --select: name -> overrides on the config as it was before the selection, fixed before
#: any --select run. The stem candidate is the other stride of the two the configs use (stride 8 where 16 was
#: shipped, 16 where 8 was).
CANDIDATES: dict[str, list[str]] = {
    "earlier config": [],
    "lr 1e-3": ["optim.lr=0.001"],
    "augment strong": ["data.augment=strong"],
}
STEM_CANDIDATE = {"pneumoniamnist": ("small_input 4", ["model.small_input=4"]),
                  "breastmnist": ("small_input 2", ["model.small_input=2"])}
#: the shipped config before the selection, as overrides on today's file: the selection chose PneumoniaMNIST's
#: stride-8 stem (small_input 4), so re-running a candidate (more seeds) starts from the stride-16 one it replaced
SELECTION_BASE = {"pneumoniamnist": ["model.small_input=2"], "breastmnist": []}


def candidates_for(dataset: str) -> dict[str, list[str]]:
    name, over = STEM_CANDIDATE[dataset]
    return {k: [*SELECTION_BASE[dataset], *v] for k, v in {**CANDIDATES, name: over}.items()}


def _val_only(cfg):
    """The config's table and splits with the test rows removed: nothing can be measured on test."""
    import numpy as np

    from medlens.data.splits import Splits
    from medlens.training import prepare_data

    table, sp = prepare_data(cfg)
    return table, Splits(sp.train, sp.val, np.zeros(0, dtype=np.int64), sp.method, [*sp.notes, "test rows withheld for selection"])


def select(dataset: str, seeds: list[int], data_dir: Path, out_dir: Path, quick: bool, with_pretrain: bool,
           choose_seeds: list[int] | None = None, only: list[str] | None = None, validation_only: bool = False) -> dict:
    """Train every candidate without test rows, choose on mean validation AUROC, read test once for the winner.

    ``choose_seeds``: the seeds every candidate is trained with (default: ``seeds``); the winner is then also
    trained with the rest of ``seeds`` (test rows still withheld), and the test split is read once per seed of
    the winner, after the choice. ``only``: train just these candidates. ``validation_only``: stop after the
    candidates' validation figures (no winner runs, test never read), e.g. to add seeds to a selection table.
    """
    from medlens.config import load_config
    from medlens.evaluation import evaluate
    from medlens.training import train

    config, rel = DATASETS[dataset]
    candidates = candidates_for(dataset)
    choose_seeds = list(choose_seeds or seeds)
    if only:
        unknown = [n for n in only if n not in candidates and not (n == "ssl-pretrained" and with_pretrain)]
        if unknown:
            raise ValueError(f"unknown candidate {unknown[0]!r} for {dataset}; valid: {', '.join(candidates)}")
    base = [f"data.path={data_dir / rel}", f"output.dir={out_dir}", "output.overwrite=true", "trainer.progress_bar=false"]
    if quick:
        base += ["trainer.max_epochs=1", "data.max_samples=600"]
    if with_pretrain:
        from medlens.pretrain import pretrain

        pcfg = load_config(ROOT / config, [*base, *SELECTION_BASE[dataset], f"pretrain.name={dataset}-ssl", "pretrain.rows=train_val"]
                           + (["pretrain.epochs=1"] if quick else []))
        candidates["ssl-pretrained"] = [*SELECTION_BASE[dataset], f"model.pretrained={pretrain(pcfg).weights}"]
    runs: dict[str, list[dict]] = {}

    def run(name: str, seed: int) -> None:
        tag = f"{dataset}-{name.replace(' ', '_')}-s{seed}"
        cfg = load_config(ROOT / config, [*base, *candidates[name], f"seed={seed}", f"output.name={tag}"])
        t0 = time.perf_counter()
        table, splits = _val_only(cfg)
        res = train(cfg, splits=splits, table=table)
        assert "test" not in res.metrics  # the invariant of the protocol
        runs.setdefault(name, []).append({"seed": seed, "val_auroc": float(res.metrics["val"]["auroc_macro"]), "bundle": str(res.bundle_dir),
                                          "config": cfg, "wall_s": time.perf_counter() - t0, "epochs": len(res.history)})
        print(f"{dataset} {name} seed {seed}: val AUROC {runs[name][-1]['val_auroc']:.4f} ({runs[name][-1]['wall_s']:.0f} s)", flush=True)

    for name in candidates:
        if only and name not in only:
            continue
        for seed in choose_seeds:
            run(name, seed)
    if validation_only:
        return {"dataset": dataset, "validation_only": True, "candidates": candidates, "choose_seeds": choose_seeds,
                "val": {k: [r["val_auroc"] for r in v] for k, v in runs.items()},
                "val_by_seed": {k: {r["seed"]: r["val_auroc"] for r in v} for k, v in runs.items()},
                "cand_wall_s": {k: statistics.mean(r["wall_s"] for r in v) for k, v in runs.items()}}
    chosen = max(runs, key=lambda k: statistics.mean(r["val_auroc"] for r in runs[k]))
    val_at_choice = {k: [r["val_auroc"] for r in v] for k, v in runs.items()}
    for seed in seeds:  # the winner's remaining seeds, trained after the choice (test still withheld)
        if seed not in choose_seeds:
            run(chosen, seed)
    final = [r for r in runs[chosen] if r["seed"] in seeds]
    t_eval = time.perf_counter()
    tests = [evaluate(r["bundle"], r["config"], split="test", record=False).metrics for r in final]  # test, read once
    print(f"{dataset}: chose {chosen!r}; test read once for {len(final)} bundles ({time.perf_counter() - t_eval:.0f} s)", flush=True)
    return {"dataset": dataset, "chosen": chosen, "candidates": candidates, "choose_seeds": choose_seeds, "val": val_at_choice,
            "final_seeds": [r["seed"] for r in final], "final_val_auroc": [r["val_auroc"] for r in final],
            "wall_s": [r["wall_s"] for r in final], "epochs": [r["epochs"] for r in final],
            "cand_wall_s": {k: statistics.mean(r["wall_s"] for r in v if r["seed"] in choose_seeds) for k, v in runs.items()},
            "test_auroc": [float(m["auroc_macro"]) for m in tests], "test_accuracy": [float(m["accuracy"]) for m in tests]}


def select_table(res: dict) -> str:
    seeds = ", ".join(str(x) for x in res["choose_seeds"])
    if res.get("validation_only"):
        lines = [f"### {res['dataset']}: candidates on validation (seed {seeds}); no choice made, test not read", "",
                 "| candidate | overrides | val AUROC | wall time per run |", "|---|---|---|---|"]
        for name, vals in res["val"].items():
            lines.append(f"| {name} | {' '.join(res['candidates'][name]) or '-'} | {_mean_sd(vals)} | {res['cand_wall_s'][name]:.0f} s |")
        return "\n".join(lines) + "\n"
    lines = [f"### {res['dataset']}: selection on validation (seed {seeds}), test read once for the chosen config", "",
             "| candidate | overrides | val AUROC (choice) | wall time per run |", "|---|---|---|---|"]
    for name, vals in res["val"].items():
        label = f"**{name}** (chosen)" if name == res["chosen"] else name
        lines.append(f"| {label} | {' '.join(res['candidates'][name]) or '-'} | {_mean_sd(vals)} | {res['cand_wall_s'][name]:.0f} s |")
    n = len(res["final_seeds"])
    lines += ["", f"Chosen config, seeds {', '.join(str(x) for x in res['final_seeds'])} (test split read once per bundle):", "",
              "| | val AUROC | test AUC | test ACC | wall time per run |", "|---|---|---|---|---|",
              f"| **{res['chosen']}** ({n} seed{'s' if n > 1 else ''}, mean ± sd) | {_mean_sd(res['final_val_auroc'])} | "
              f"**{_mean_sd(res['test_auroc'])}** | **{_mean_sd(res['test_accuracy'])}** | "
              f"{statistics.mean(res['wall_s']):.0f} s (max {max(res['wall_s']):.0f} s) |"]
    for sd, v, a, c, w in zip(res["final_seeds"], res["final_val_auroc"], res["test_auroc"], res["test_accuracy"], res["wall_s"], strict=True):
        lines.append(f"| ... seed {sd} | {v:.3f} | {a:.3f} | {c:.3f} | {w:.0f} s |")
    for name, auc, acc in PUBLISHED[res["dataset"]]:
        lines.append(f"| {name} (published) | — | {auc:.3f} | {'—' if acc is None else f'{acc:.3f}'} | — |")
    return "\n".join(lines) + "\n"


def _mean_sd(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def table(dataset: str, runs: list[dict]) -> str:
    aucs = [r["auroc"] for r in runs]
    accs = [r["accuracy"] for r in runs]
    walls = [r["wall_s"] for r in runs]
    lines = [f"### {dataset} (test split, {len(runs)} seed{'s' if len(runs) > 1 else ''})", "",
             "| model | AUC | ACC | wall time per run |", "|---|---|---|---|"]
    lines.append(f"| **medlens `{DATASETS[dataset][0]}`** (mean ± sd) | **{_mean_sd(aucs)}** | **{_mean_sd(accs)}** | "
                 f"{statistics.mean(walls):.0f} s (max {max(walls):.0f} s) |")
    for r in runs:
        lines.append(f"| ... seed {r['seed']} ({r['epochs']} epochs, {r['weights']} weights) | {r['auroc']:.3f} | "
                     f"{r['accuracy']:.3f} | {r['wall_s']:.0f} s |")
    if dataset in REFERENCE_RUN:
        name, auc, acc, wall = REFERENCE_RUN[dataset]
        lines.append(f"| {name} | {auc:.3f} | {acc:.3f} | {wall:.0f} s |")
    for name, auc, acc in PUBLISHED[dataset]:
        lines.append(f"| {name} (published) | {auc:.3f} | {'—' if acc is None else f'{acc:.3f}'} | — |")
    m_auc, m_acc = statistics.mean(aucs), statistics.mean(accs)
    verdicts = []
    for name, auc, acc in PUBLISHED[dataset]:
        beats = m_auc > auc and (acc is None or m_acc > acc)
        verdicts.append(f"{name}: {'beaten' if beats else 'not beaten'} (AUC {m_auc - auc:+.3f}"
                        + ("" if acc is None else f", ACC {m_acc - acc:+.3f}") + ")")
    if dataset in REFERENCE_RUN:
        name, auc, acc, wall = REFERENCE_RUN[dataset]
        ok = m_auc > auc and m_acc > acc and max(walls) <= wall
        verdicts.append(f"reference run: {'beaten' if ok else 'not beaten'} (AUC {m_auc - auc:+.3f}, ACC {m_acc - acc:+.3f}, "
                        f"slowest run {max(walls):.0f} s vs {wall:.0f} s)")
    lines += ["", *[f"- {v}" for v in verdicts], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--data-dir", default=None, help="the shared data folder (default ../shared/data or $MEDLENS_SHARED_DATA)")
    ap.add_argument("--out", default=None, help="where runs go (default: a temporary folder, removed)")
    ap.add_argument("--json", default=None, help="also write every run's figures to this JSON file")
    ap.add_argument("--quick", action="store_true", help="1 epoch and the first seed only (with --select: also 600 rows)")
    ap.add_argument("--select", action="store_true", help="compare CANDIDATES on validation; read test once for the chosen one")
    ap.add_argument("--choose-seeds", nargs="+", type=int, default=None,
                    help="--select: seeds every candidate is trained with (default: --seeds); the winner then runs the other --seeds")
    ap.add_argument("--with-pretrain", action="store_true", help="--select: add a candidate fine-tuned from `medlens pretrain` weights")
    ap.add_argument("--candidates", nargs="+", default=None, help="--select: train only these candidates (names as in CANDIDATES)")
    ap.add_argument("--validation-only", action="store_true",
                    help="--select: report the candidates' validation AUROC and stop (no choice, test never read)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    data_dir = _shared_data(args.data_dir)
    seeds = args.seeds[:1] if args.quick else args.seeds
    missing = [d for d in args.datasets if not (data_dir / DATASETS[d][1]).is_file()]
    if missing:
        print(f"error: {', '.join(data_dir / DATASETS[d][1] for d in missing)} not found (pass --data-dir)", file=sys.stderr)
        return 2
    tmp = None if args.out else tempfile.TemporaryDirectory(prefix="medlens-bench-")
    out = Path(args.out or tmp.name)
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; data {data_dir}")
    if args.select:
        chosen = []
        for ds in args.datasets:
            try:
                chosen.append(select(ds, seeds, data_dir, out, args.quick, args.with_pretrain, args.choose_seeds,
                                     args.candidates, args.validation_only))
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            print(select_table(chosen[-1]), flush=True)
            if args.json:  # after each dataset: a long run keeps what it has
                Path(args.json).write_text(json.dumps(chosen, indent=2, default=str))
        if tmp is not None:
            tmp.cleanup()
        return 0
    runs: dict[str, list[dict]] = {}
    for ds in args.datasets:
        for seed in seeds:
            r = run_one(ds, seed, data_dir, out, args.quick)
            print(f"{ds} seed {seed}: test AUC {r['auroc']:.4f} ACC {r['accuracy']:.4f}, {r['epochs']} epochs, "
                  f"{r['wall_s']:.1f} s wall ({r['train_s']:.1f} s fit)", flush=True)
            runs.setdefault(ds, []).append(r)
    print()
    for ds, rs in runs.items():
        print(table(ds, rs))
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
