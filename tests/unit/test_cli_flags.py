"""What every command shares: ``--quiet`` and ``--verbose`` (accepted everywhere, and they act), a run folder wherever
a bundle is, ``download``'s exit code, and a stdout that carries only results (each parsed as JSON, TSV or the table)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import typer.main
from PIL import Image
from typer.testing import CliRunner

from medlens.cli import app, common
from tests.unit._bundles import random_bundle
from tests.unit.test_cli_help import COMMANDS  # every command and group, walked from the app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _restore_logging():
    """The commands configure the root logger and the verbosity; later tests get them back as they were."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    common.set_verbosity(reset=True)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> SimpleNamespace:
    """Two run folders with random bundles, three images, a synthetic data config."""
    root = tmp_path_factory.mktemp("cli")
    runs = root / "runs"
    for i, name in enumerate(("r1", "r2")):
        run = runs / name
        random_bundle(run / "bundle", names=("negative", "positive"), seed=i)
        (run / "config.yaml").write_text(f"data:\n  kind: synthetic\nseed: {i}\n")
        (run / "metrics.json").write_text(json.dumps({"val": {"auroc_macro": 0.7 + i / 10}, "test": {"auroc_macro": 0.6}}))
    (root / "imgs").mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32), dtype=np.uint8)).save(root / "imgs" / f"{i}.png")
    syn = root / "syn.yaml"
    syn.write_text("data:\n  kind: synthetic\n  num_samples: 40\n  image_size: 32\n  channels: 1\n")
    return SimpleNamespace(root=root, runs=runs, run=runs / "r1", imgs=root / "imgs", syn=syn)


# ------------------------------------------------------------------------------------------ --quiet / --verbose
@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "medlens")
def test_every_command_takes_quiet_and_verbose(path: list[str]) -> None:
    out = runner.invoke(app, [*path, "--help"]).output
    assert "-q, --quiet" in out and "-v, --verbose" in out, out


def test_quiet_leaves_stderr_empty_on_success(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    loud = runner.invoke(app, ["init", "a"])
    assert loud.exit_code == 0 and "next steps:" in loud.stderr  # notes for a person, on stderr
    for argv in (["init", "b", "--quiet"], ["--quiet", "init", "c"], ["init", "d", "-q"]):
        r = runner.invoke(app, argv)
        assert r.exit_code == 0, r.output
        assert r.stderr == ""
        assert r.stdout.splitlines() == loud.stdout.replace("wrote a/", f"wrote {argv[1] if argv[0] == 'init' else argv[2]}/").splitlines()


def test_quiet_and_verbose_set_the_log_level_and_the_progress_bars(work) -> None:
    for argv, level in ((["runs", "list", str(work.runs)], logging.INFO), (["runs", "list", str(work.runs), "--quiet"], logging.WARNING),
                        (["runs", "--verbose", "list", str(work.runs)], logging.DEBUG), (["--verbose", "runs", "list", str(work.runs)], logging.DEBUG)):
        r = runner.invoke(app, argv)
        assert r.exit_code == 0, r.output
        assert logging.getLogger().level == level, argv
        assert common.show_progress(True) is (level != logging.WARNING)  # --quiet: no progress bar, wherever asked
    r = runner.invoke(app, ["--quiet", "runs", "list", str(work.runs), "--verbose"])
    assert r.exit_code == 2 and r.stderr == "error: --quiet and --verbose cannot be used together\n"


def test_quiet_turns_the_training_progress_bar_off(tmp_path, monkeypatch) -> None:
    seen = []
    fake = SimpleNamespace(train=lambda cfg, resume=None: seen.append(cfg) or SimpleNamespace(metrics={}))
    monkeypatch.setitem(sys.modules, "medlens.training", fake)  # the command's own code, without a training
    cfg = tmp_path / "run.yaml"
    cfg.write_text("data:\n  kind: synthetic\n")
    assert runner.invoke(app, ["train", str(cfg)]).exit_code == 0
    assert runner.invoke(app, ["train", str(cfg), "--quiet"]).exit_code == 0
    assert [c.trainer.progress_bar for c in seen] == [True, False]


def _medlens(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medlens", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_verbose_shows_the_traceback_of_a_failure_and_only_then(tmp_path) -> None:
    plain = _medlens("runs", "compare", "nope1", "nope2", cwd=tmp_path)
    assert plain.returncode == 2
    assert plain.stderr == "error: run folder not found: nope1\n" and plain.stdout == ""
    for argv in (["runs", "compare", "nope1", "nope2", "--verbose"], ["-v", "runs", "compare", "nope1", "nope2"]):
        loud = _medlens(*argv, cwd=tmp_path)
        assert loud.returncode != 0
        assert "Traceback (most recent call last)" in loud.stderr and "FileNotFoundError: run folder not found: nope1" in loud.stderr


# ------------------------------------------------------------------------------------------ run folders
def _bundle_commands() -> list[list[str]]:
    root = typer.main.get_command(app)
    return [p for p in COMMANDS if p and any(x.name == "bundle" for x in _command(root, p).params)]


def _command(root, path: list[str]):
    cmd = root
    for name in path:
        cmd = cmd.commands[name]
    return cmd


def test_the_commands_that_take_a_bundle_are_found():
    assert {"evaluate", "predict", "explain", "export", "serve"} <= {" ".join(p) for p in _bundle_commands()}


@pytest.mark.parametrize("path", _bundle_commands(), ids=" ".join)
def test_every_bundle_argument_takes_a_run_folder(work, path: list[str]) -> None:
    """Parsed as the command would parse it: the run folder arrives as its bundle folder; a bundle as itself."""
    cmd = _command(typer.main.get_command(app), path)

    def parsed(bundle: Path) -> Path:
        args: list[str] = []
        for p in cmd.params:
            if p.param_type_name == "argument":
                args.append(str(bundle) if p.name == "bundle" else "x")
            elif p.required:
                args += [p.opts[0], "x"]
        return cmd.make_context(" ".join(path), args).params["bundle"]

    assert parsed(work.run) == work.run / "bundle"
    assert parsed(work.run / "bundle") == work.run / "bundle"
    assert parsed(work.root / "missing") == work.root / "missing"  # left to the command, after its own checks


def test_predict_reads_a_run_folder(work) -> None:
    via_run = runner.invoke(app, ["predict", str(work.run), str(work.imgs)])
    via_bundle = runner.invoke(app, ["predict", str(work.run / "bundle"), str(work.imgs)])
    assert via_run.exit_code == 0, via_run.output
    assert via_run.stdout == via_bundle.stdout and len(via_run.stdout.splitlines()) == 3
    # evaluate reads the run folder too: test_stdout_carries_only_results[evaluate --json]


def test_a_folder_that_is_not_one_run_or_bundle_is_one_line_and_exit_2(work, tmp_path) -> None:
    amb = tmp_path / "amb"
    (amb / "bundle").mkdir(parents=True)
    for d in (amb, amb / "bundle"):
        (d / "manifest.json").write_text((work.run / "bundle" / "manifest.json").read_text())
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / "config.yaml").write_text("data:\n  kind: synthetic\n")
    cases = {amb: f"error: {amb}: ambiguous: a bundle itself (manifest.json) and a run folder with another bundle in {amb / 'bundle'}",
             work.runs: f"error: {work.runs}: neither a run folder (with bundle/) nor a bundle folder (with manifest.json); it holds 2 "
                        f"({work.runs / 'r1'}, {work.runs / 'r2'}): name the one to use",
             unfinished: f"error: {unfinished}: a run folder without a bundle yet"}
    for folder, line in cases.items():
        for argv in (["predict", str(folder), str(work.imgs)], ["evaluate", str(folder)], ["serve", str(folder)]):
            r = runner.invoke(app, argv)
            assert r.exit_code == 2, (argv, r.output)
            assert r.stderr.startswith(line) and r.stderr.count("\n") == 1, (argv, r.stderr)
            assert r.stdout == ""


# ------------------------------------------------------------------------------------------ download
class _Files(BaseHTTPRequestHandler):
    """/ok/<name>: a few bytes; anything else: 404."""

    def log_message(self, *a) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        if self.path.startswith("/ok/"):
            body = b"\x89PNG fake " + self.path.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_response(404)
            self.end_headers()


@pytest.fixture
def http_base():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_exits_1_naming_the_count_and_the_first_failure_and_0_when_all_are_in(tmp_path, http_base) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(f"url,class\n{http_base}/ok/a.png,normal\n{http_base}/gone/b.png,normal\n{http_base}/gone/c.png,sick\n")
    out = tmp_path / "o"
    r = runner.invoke(app, ["download", str(bad), "--out", str(out), "--retries", "0", "--workers", "2"])
    assert r.exit_code == 1, r.output
    last = r.stderr.splitlines()[-1]
    assert last.startswith(f"error: 2 of 3 rows failed, the first line 3: {http_base}/gone/b.png (")
    assert "404" in last and "all listed in" in last
    good = tmp_path / "good.csv"
    good.write_text(f"url,class\n{http_base}/ok/a.png,normal\n{http_base}/ok/d.png,sick\n")
    r = runner.invoke(app, ["download", str(good), "--out", str(out), "--retries", "0"])
    assert r.exit_code == 0, r.output  # one downloaded now, one already present from the first run
    assert "1 downloaded, 1 already present" in r.stdout
    r = runner.invoke(app, ["download", str(good), "--out", str(out), "--retries", "0", "--quiet"])
    assert r.exit_code == 0 and "0 downloaded, 2 already present" in r.stdout and r.stderr == ""


# ------------------------------------------------------------------------------------------ stdout: results only
def _table(text: str) -> list[list[str]]:
    """The rows of a rich table (title, then a header and one row per run between box lines)."""
    rows = [[c.strip() for c in ln.strip().strip("│┃").split("│" if "│" in ln else "┃")] for ln in text.splitlines() if ln.lstrip().startswith(("│", "┃"))]
    assert rows and all(len(r) == len(rows[0]) for r in rows), text
    return rows


def _tsv(text: str) -> list[list[str]]:
    rows = [ln.split("\t") for ln in text.splitlines()]
    assert rows and all(len(r) == 2 and Path(r[0]).is_file() for r in rows), text
    return rows


def _wrote(text: str) -> list[str]:
    paths = [ln.removeprefix("wrote ") for ln in text.splitlines()]
    assert paths and all(ln.startswith("wrote ") for ln in text.splitlines()) and all(Path(p).is_file() for p in paths), text
    return paths


#: fast commands and the parser their stdout must pass (``{run}``, ``{r2}``, ``{runs}``, ``{imgs}``, ``{syn}``, ``{root}``
#: stand for the fixture's paths)
STDOUT_CASES = {
    "--version": (["--version"], lambda t: t.startswith("medlens ") and len(t.splitlines()) == 1),
    "runs list --json": (["runs", "list", "{runs}", "--json"], json.loads),
    "runs list": (["runs", "list", "{runs}"], _table),
    "runs compare --json": (["runs", "compare", "{run}", "{r2}", "--json"], json.loads),
    "predict --json": (["predict", "{run}", "{imgs}", "--json"], json.loads),
    "predict --json --out": (["predict", "{run}", "{imgs}", "--json", "--out", "{root}/p.csv"], json.loads),  # "wrote": stderr
    "predict": (["predict", "{run}", "{imgs}"], _tsv),
    "evaluate --json": (["evaluate", "{run}", "--config", "{syn}", "--json", "--no-record"], lambda t: json.loads(t)["split"] == "test"),
    "init": (["init", "{root}/proj", "--overwrite"], _wrote),
}


@pytest.mark.parametrize("case", STDOUT_CASES)
def test_stdout_carries_only_results(work, monkeypatch, case: str) -> None:
    monkeypatch.chdir(work.root)
    template, parse = STDOUT_CASES[case]
    paths = {"run": work.run, "r2": work.runs / "r2", "runs": work.runs, "imgs": work.imgs, "syn": work.syn, "root": work.root}
    argv = [a.format(**{k: str(v) for k, v in paths.items()}) for a in template]
    r = runner.invoke(app, argv)
    assert r.exit_code == 0, (argv, r.output)
    assert parse(r.stdout), (argv, r.stdout)
    assert not any(ln.startswith(("INFO", "WARNING", "DEBUG", "next steps")) for ln in r.stdout.splitlines()), (argv, r.stdout)


def test_help_goes_to_stdout_alone() -> None:
    for path in COMMANDS:
        r = runner.invoke(app, [*path, "--help"])
        assert r.stdout.startswith("Usage: ") and r.stderr == ""
