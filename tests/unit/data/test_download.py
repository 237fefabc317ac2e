"""``medlens download``: concurrent, retrying, resumable, hard-linked class tree, nothing written outside DIR.

Every test talks to a local HTTP server on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medlens.cli import app
from medlens.data.download import STORE, SUMMARY, download, read_url_csv, safe_name


class Server:
    """Serves /img/<name> (PNG-ish bytes), /flaky/<name> (503 twice, then OK), /missing (404),
    /short (announces more bytes than it sends) and /slow (never answers in time)."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.flaky_left: Counter[str] = Counter()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                outer.hits[self.path] += 1
                if self.path.startswith("/flaky/"):
                    if outer.flaky_left[self.path] < 2:
                        outer.flaky_left[self.path] += 1
                        self.send_response(503)
                        self.end_headers()
                        return
                if self.path.startswith(("/img/", "/flaky/", "/x/")):
                    body = b"\x89PNG fake " + self.path.encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                elif self.path == "/short":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b"only a little")
                elif self.path == "/slow":
                    threading.Event().wait(3)
                    self.send_response(200)
                    self.end_headers()
                else:
                    self.send_response(404)
                    self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def all_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_downloads_into_class_folders_with_hard_links(tmp_path: Path, server: Server) -> None:
    b = server.base
    csv = tmp_path / "urls.csv"
    csv.write_text(f"url,class\n{b}/img/a.png,normal\n{b}/img/b.png,pneumonia\n{b}/img/a.png,pneumonia\n{b}/flaky/c.png,normal\n")
    out = tmp_path / "out"
    s = download(csv, out, workers=4, timeout=5, retries=3, backoff=0.01)
    assert s.failed == [] and s.downloaded == 3 and s.linked == 4
    assert sorted(p.name for p in (out / "normal").iterdir()) == ["a.png", "c.png"]
    assert sorted(p.name for p in (out / "pneumonia").iterdir()) == ["a.png", "b.png"]
    # one stored copy, hard-linked into both class folders; fetched once
    assert os.path.samefile(out / "normal" / "a.png", out / "pneumonia" / "a.png")
    assert (out / "normal" / "a.png").stat().st_nlink == 3
    assert server.hits["/img/a.png"] == 1
    assert server.hits["/flaky/c.png"] == 3  # two 503s, then success
    assert (out / "normal" / "c.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((out / SUMMARY).read_text())["downloaded"] == 3


def test_resume_keeps_complete_files_and_ignores_partial_ones(tmp_path: Path, server: Server) -> None:
    b = server.base
    csv = tmp_path / "urls.csv"
    csv.write_text(f"{b}/img/a.png,x\n{b}/img/b.png,x\n")  # no header
    out = tmp_path / "out"
    download(csv, out, workers=2, backoff=0.01)
    (out / STORE / "b.png").unlink()  # as if the first run had been interrupted before b.png was complete
    (out / STORE / ".b.png.123.part").write_bytes(b"half")  # a leftover temporary file
    s = download(csv, out, workers=2, backoff=0.01)
    assert s.kept == 1 and s.downloaded == 1
    assert server.hits["/img/a.png"] == 1 and server.hits["/img/b.png"] == 2
    assert (out / "x" / "b.png").read_bytes().startswith(b"\x89PNG")


def test_failures_are_listed_with_line_numbers(tmp_path: Path, server: Server) -> None:
    b = server.base
    csv = tmp_path / "urls.csv"
    csv.write_text(f"url,class\n{b}/missing.png,a\n{b}/short,a\nfile:///etc/passwd,a\n{b}/slow,a\n{b}/img/ok.png,a\n")
    s = download(csv, tmp_path / "out", workers=4, timeout=0.5, retries=1, backoff=0.01)
    reasons = {f.line: f.reason for f in s.failed}
    assert set(reasons) == {2, 3, 4, 5}
    assert "HTTP 404" in reasons[2]
    assert "incomplete" in reasons[3] or "IncompleteRead" in reasons[3]
    assert "only http(s)" in reasons[4]
    assert "timed out" in reasons[5].lower() or "timeout" in reasons[5].lower()
    assert server.hits["/missing.png"] == 1  # a 404 is not retried
    assert s.downloaded == 1
    assert not [p for p in (tmp_path / "out").rglob("*.part")]  # no half-written file left behind
    summary = json.loads((tmp_path / "out" / SUMMARY).read_text())
    assert [f["line"] for f in summary["failed"]] == [2, 3, 4, 5]


def test_path_traversal_never_writes_outside_the_output_folder(tmp_path: Path, server: Server) -> None:
    b = server.base
    csv = tmp_path / "evil.csv"
    csv.write_text(
        "url,class\n"
        f"{b}/x/..%2F..%2F..%2Fescaped.png,normal\n"  # encoded separators in the file name
        f"{b}/img/ok.png,../../escaped_class\n"  # class climbing out
        f"{b}/img/abs.png,/tmp/abs_class\n"  # absolute class path
        f"{b}/img/dots.png,..\n"  # nothing usable left
        f"{b}/x/%2E%2E,normal\n"  # a file named '..'
        f"{b}/img/hidden.png,.files\n"  # the store's own name
    )
    (tmp_path / "outer").mkdir()
    out = tmp_path / "outer" / "out"
    before = all_files(tmp_path)
    s = download(csv, out, workers=3, backoff=0.01)
    new = all_files(tmp_path) - before
    assert new and all(out in p.parents for p in new), sorted(new)
    assert not list(tmp_path.rglob("escaped*")) or all(out in p.parents for p in tmp_path.rglob("escaped*"))
    assert not Path("/tmp/abs_class").exists()
    classes = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name != STORE)
    assert classes == ["escaped_class", "files", "normal", "tmp_abs_class"]
    assert [f.line for f in s.failed] == [5]  # class '..' is refused and listed


def test_safe_name_and_csv_parsing(tmp_path: Path) -> None:
    assert safe_name("..") == "" and safe_name("a/b\\c") == "a_b_c" and safe_name(".hidden") == "hidden"
    csv = tmp_path / "u.csv"
    csv.write_text("class,url\ncat,http://h/a/img.png\ndog,http://h/b/img.png\ncat,http://h/a/img.png\n")
    rows, bad = read_url_csv(csv)
    assert bad == [] and len(rows) == 2  # the duplicate row is dropped
    assert rows[0].name == "img.png" and rows[1].name.startswith("img_") and rows[1].name.endswith(".png")
    assert read_url_csv(csv)[0][1].name == rows[1].name  # stable across runs


def test_cli_download(tmp_path: Path, server: Server) -> None:
    csv = tmp_path / "urls.csv"
    csv.write_text(f"url,class\n{server.base}/img/a.png,normal\n{server.base}/missing,normal\n")
    r = CliRunner().invoke(app, ["download", str(csv), "--out", str(tmp_path / "o"), "--workers", "2", "--retries", "0"])
    assert r.exit_code == 1, r.output  # a partial download is a failure for scripts and schedulers
    assert "1 downloaded" in r.output and "1 failed" in r.output and "line 3" in r.output
    assert "1 of 2 rows failed" in r.output
    r = CliRunner().invoke(app, ["download", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "not found" in r.output
