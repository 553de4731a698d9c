"""report.html and the timeline page, checked in a real browser: headless Chromium driven over the DevTools
protocol (a minimal stdlib WebSocket client) loads each page, and the tests assert no failed resources, no
script errors, the run's numbers in the rendered text, and a non-blank screenshot of the requested size.
Skipped where no Chromium is installed (CI installs one)."""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import shutil
import socket
import struct
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from vidlstm.common.report import write_timeline
from vidlstm.data.index import VideoRecord
from vidlstm.data.synthetic import write_mp4
from vidlstm.inference.batch import predict_folder
from vidlstm.inference.evaluate import evaluate
from vidlstm.inference.predictor import Predictor

from .conftest import brightness_clip

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SCRIPT_NAME = "<script>alert(1)</script>.mp4"  # a file name that must show up as text


class WebSocket:
    """Just enough of RFC 6455 for the DevTools protocol: masked text frames out, (fragmented) frames in."""

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        parts = urlparse(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout_s)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                          .encode())
        response = b""
        while not response.endswith(b"\r\n\r\n"):
            response += self._exact(1)
        assert b" 101 " in response.split(b"\r\n")[0], response

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("DevTools connection closed")
            data += chunk
        return data

    def send(self, text: str) -> None:
        payload, mask = text.encode(), os.urandom(4)
        n = len(payload)
        size = bytes([0x80 | n]) if n < 126 else (bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536
                                                  else bytes([0x80 | 127]) + struct.pack(">Q", n))
        masked = (np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)).tobytes()
        self.sock.sendall(b"\x81" + size + mask + masked)

    def recv(self) -> str:
        message = b""
        while True:
            first, second = self._exact(2)
            n = second & 0x7F
            n = struct.unpack(">H", self._exact(2))[0] if n == 126 else (
                struct.unpack(">Q", self._exact(8))[0] if n == 127 else n)
            data = self._exact(n)
            if first & 0x0F == 8:
                raise ConnectionError("DevTools connection closed")
            if first & 0x0F in (0, 1, 2):
                message += data
                if first & 0x80:
                    return message.decode()

    def close(self) -> None:
        self.sock.close()


@dataclass
class PageCheck:
    """What the browser saw while loading a page."""

    text: str
    screenshot: bytes
    exceptions: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def problems(self) -> list[str]:
        return self.exceptions + self.console_errors + self.failed_requests


class Page:
    """One browser tab: commands in, events collected as they arrive."""

    def __init__(self, url: str) -> None:
        self.ws, self.ids, self.events = WebSocket(url), itertools.count(1), []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(e.get("method") == method for e in self.events):
            assert time.monotonic() < deadline, f"no {method} within {timeout_s} s"
            self.events.append(json.loads(self.ws.recv()))

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")


class Browser:
    """Headless Chromium with a DevTools port; `check` loads a page in a fresh tab."""

    def __init__(self, executable: str, profile: Path) -> None:
        self.process = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (active.is_file() and len(active.read_text().splitlines()) >= 2):
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.close()
                pytest.fail(f"{executable} did not open its DevTools port")
            time.sleep(0.1)
        self.port = int(active.read_text().splitlines()[0])

    def check(self, html: Path, width: int = 1100, height: int = 900,
              values: dict[str, str] | None = None) -> PageCheck:
        """Load ``html``, then return its text, a screenshot of ``width`` x ``height`` and every error seen;
        ``values`` are JavaScript expressions evaluated in the loaded page."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/json/new?about:blank", method="PUT")
        target = json.loads(urllib.request.urlopen(request, timeout=30).read())
        page = Page(target["webSocketDebuggerUrl"])
        try:
            for domain in ("Page", "Runtime", "Log", "Network"):
                page.call(f"{domain}.enable")
            page.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                      mobile=False)
            page.call("Page.navigate", url=html.resolve().as_uri())
            page.wait_for("Page.loadEventFired")
            page.evaluate("new Promise(r => setTimeout(r, 200))")  # late errors and requests arrive meanwhile
            text = page.evaluate("document.body.innerText")
            results = {name: page.evaluate(expression) for name, expression in (values or {}).items()}
            shot = base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"])
            return _collect(page.events, text, shot, results)
        finally:
            page.ws.close()
            urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/close/{target['id']}", timeout=30).read()

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _collect(events: list[dict[str, Any]], text: str, shot: bytes, values: dict[str, Any]) -> PageCheck:
    check = PageCheck(text, shot, values=values)
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            check.exceptions.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            check.console_errors.append(params["entry"]["text"])
        elif method == "Runtime.consoleAPICalled" and params["type"] == "error":
            check.console_errors.append(str(params["args"]))
        elif method == "Network.loadingFailed":
            check.failed_requests.append(f"{params.get('errorText')} {params.get('blockedReason', '')}")
    return check


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    executable = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    if executable is None:
        pytest.skip("no Chromium/Chrome installed (apt-get install chromium)")
    chromium = Browser(executable, tmp_path_factory.mktemp("chromium-profile"))
    yield chromium
    chromium.close()


def assert_clean_render(check: PageCheck, width: int = 1100, height: int = 900) -> None:
    assert not check.problems, check.problems
    image = np.asarray(Image.open(io.BytesIO(check.screenshot)).convert("L"), dtype=np.float64)
    assert image.shape == (height, width)
    assert image.std() > 5, "blank screenshot"


TABLE_ROWS = ("JSON.stringify([...(document.querySelector('#{id}') || {{tBodies: [{{rows: []}}]}}).tBodies[0].rows]"
              ".map(r => [...r.cells].map(c => c.textContent)))")
PAGE_VALUES = {"per_class": TABLE_ROWS.format(id="per-class"), "failed": TABLE_ROWS.format(id="failed"),
               "filmstrips": "document.querySelectorAll('img[alt^=\"frames of\"]').length",
               "images": "[...document.images].every(i => i.complete && i.naturalWidth > 0)",
               "scripts": "document.scripts.length"}


def _table(check: PageCheck, name: str) -> list[list[str]]:
    return json.loads(check.values[name])


def assert_per_class_matches(check: PageCheck, confusion: list[list[int]], class_names: list[str]) -> None:
    """Every class is in the page's per-class table with its confusion-matrix row's accuracy."""
    matrix = np.asarray(confusion)
    expected = [[name, str(matrix[i].sum()), str(matrix[i, i]),
                 f"{matrix[i, i] / matrix[i].sum():.4f}" if matrix[i].sum() else "n/a"]
                for i, name in enumerate(class_names)]
    assert _table(check, "per_class") == expected


# ----------------------------------------------------------------------------------------------------------------
# The check itself can fail: an external resource and a script error are caught.


def test_an_external_resource_and_a_script_error_are_caught(browser: Browser, tmp_path: Path) -> None:
    from vidlstm.common.report import CSP, PAGE

    clean = tmp_path / "clean.html"
    clean.write_text(PAGE.format(csp=CSP, title="clean", body="<p>accuracy 0.8750</p>"))
    ok = browser.check(clean)
    assert_clean_render(ok)
    assert "accuracy 0.8750" in ok.text

    external = tmp_path / "external.html"
    external.write_text(PAGE.format(csp=CSP, title="x", body='<img src="http://example.com/logo.png">'))
    assert browser.check(external).failed_requests, "an external image must be caught as a failed resource"
    broken = tmp_path / "script_error.html"
    broken.write_text(PAGE.format(csp=CSP, title="x", body="<script>undefinedFunction()</script>"))
    assert any("undefinedFunction" in e for e in browser.check(broken).exceptions)


# ----------------------------------------------------------------------------------------------------------------
# Evaluation and predict's timeline page, with the fast dark/bright checkpoint.


@pytest.fixture(scope="module")
def predictor(brightness_checkpoint: Path) -> Predictor:
    return Predictor.from_checkpoint(brightness_checkpoint, device="cpu", num_clips=1, top_k=2)


def test_evaluation_report_shows_results_mistakes_and_bad_videos(browser: Browser, predictor: Predictor,
                                                                 tmp_path: Path) -> None:
    records = []
    for n, (label, level) in enumerate([("dark", 40), ("dark", 215), ("bright", 215), ("dark", 40)]):
        write_mp4(tmp_path / f"{n}.mp4", brightness_clip(level, 10, 300 + n), fps=8)  # video 1: a known mistake
        records.append(VideoRecord(str(tmp_path / f"{n}.mp4"), label))
    odd = tmp_path / "<script>alert(1)<" / "script>.mp4"  # its path ends in SCRIPT_NAME
    odd.parent.mkdir()
    odd.write_bytes((tmp_path / "0.mp4").read_bytes()[:400])  # truncated
    records.insert(2, VideoRecord(str(odd), "bright"))
    started = time.perf_counter()
    results = evaluate(predictor, records, tmp_path / "eval", batch_size=2, num_workers=0,
                       config="ckpt_path: <best>.ckpt\n")
    assert results["timing"]["compute_s"] + results["timing"]["decode_wait_s"] <= time.perf_counter() - started

    check = browser.check(tmp_path / "eval" / "report.html", values=PAGE_VALUES)
    assert_clean_render(check)
    assert f"{results['video/acc']:.4f}" in check.text and "ckpt_path: <best>.ckpt" in check.text
    assert_per_class_matches(check, results["confusion_matrix"], predictor.class_names)
    assert _table(check, "failed") == [[str(odd), results["failed_videos"][0]["reason"], "evaluation"]]
    assert str(odd).endswith(SCRIPT_NAME) and SCRIPT_NAME in check.text and check.values["scripts"] == 1
    assert "dark → bright: 1 video\n" in check.text and check.values["filmstrips"] == 1
    assert check.values["images"]
    for png in ("confusion_matrix.png", "per_class_acc.png", "top_confusions.png"):
        assert (tmp_path / "eval" / png).is_file()


def test_timeline_page_shows_each_videos_segments(browser: Browser, predictor: Predictor, tmp_path: Path) -> None:
    frames = np.concatenate([brightness_clip(40, 32, 4), brightness_clip(215, 32, 5)])  # 4 s dark, 4 s bright
    (tmp_path / "in").mkdir()
    write_mp4(tmp_path / "in" / "long.mp4", frames, fps=8)
    write_mp4(tmp_path / "in" / "dark.mp4", brightness_clip(40, 32, 6), fps=8)
    predict_folder(predictor, tmp_path / "in", tmp_path / "preds.csv", window_s=2, stride_s=2, num_workers=0,
                   segments_output=tmp_path / "preds.segments.jsonl", segment_settings={"min_duration_s": 0})
    segments = [json.loads(line) for line in (tmp_path / "preds.segments.jsonl").read_text().splitlines()]
    page = tmp_path / "preds.timeline.html"
    check = browser.check(page, values={"tips": "[...document.querySelectorAll('svg rect title')]"
                                                ".map(t => t.textContent)"})
    assert_clean_render(check)
    assert {s["label"] for s in segments} == {"dark", "bright"}
    assert check.values["tips"] == [f"{s['label']}: {s['start_s']:.2f}-{s['end_s']:.2f} s, score {s['score']:.3f}"
                                    for s in segments]
    assert "2 videos" in check.text and str(tmp_path / "in" / "long.mp4") in check.text

    odd = tmp_path / "odd.segments.jsonl"  # labels and paths from data are text, never markup
    odd.write_text(json.dumps({"path": SCRIPT_NAME, "start_s": 0, "end_s": 1, "label": "<b>x</b>", "score": 1}))
    escaped = browser.check(write_timeline(odd, tmp_path / "odd.html"))
    assert_clean_render(escaped)
    assert SCRIPT_NAME in escaped.text and "<b>x</b>" in escaped.text


# ----------------------------------------------------------------------------------------------------------------
# A real training run.


@pytest.mark.slow
def test_training_run_writes_a_report(browser: Browser, make_config, tmp_path: Path) -> None:
    from vidlstm.training.train import train

    root = tmp_path / "videos"
    levels = {"dark": 40, "dark_too": 40, "bright": 215}  # the twins cannot be told apart: mistakes are certain
    for label, level in levels.items():
        (root / label).mkdir(parents=True)
        for n in range(8):
            write_mp4(root / label / f"{n}.mp4", brightness_clip(level, 8, seed=n + 7 * level), fps=8)
    bad = root / "bright" / "<img src=x onerror=alert(1)>.mp4"
    bad.write_bytes(b"not a video" * 20)
    cfg = make_config("data=folder", f"data.root={root}", "data.num_frames=4", "data.val_fraction=0.25",
                      "data.test_fraction=0.25", "trainer.max_epochs=2", "optimizer.lr=0.003")
    summary, _ = train(cfg)
    run = Path(summary["output_dir"])
    assert any(c.startswith("lr-") for c in (run / "metrics.csv").read_text().splitlines()[0].split(","))
    for png in ("curves.png", "learning_rate.png", "confusion_matrix.png", "per_class_acc.png", "top_confusions.png"):
        assert (run / png).is_file(), png

    check = browser.check(run / "report.html", values=PAGE_VALUES)
    assert_clean_render(check)
    for key in ("test/acc", "val/acc_best"):
        assert f"{key}\n{summary[key]:.4f}" in check.text, key
    assert_per_class_matches(check, summary["test/confusion_matrix"], summary["class_names"])
    assert [row[0] for row in _table(check, "failed")] == [str(bad)] and check.values["scripts"] == 1
    assert f"share of training time waiting for decoded data\t{summary['train/data_wait_share']:.4f}" in check.text
    assert "seed:" in check.text
    matrix = np.asarray(summary["test/confusion_matrix"])
    assert (matrix.sum() - np.trace(matrix)) > 0 and check.values["filmstrips"] >= 1 and check.values["images"]


# ----------------------------------------------------------------------------------------------------------------
# Without a browser: which clips the filmstrips show.


def test_example_clips_follow_the_records_past_failed_videos() -> None:
    from vidlstm.common.plots import top_confusions
    from vidlstm.common.report import ExampleCollector

    names = ["a", "b"]
    records = [VideoRecord(f"{n}.mp4", label) for n, label in enumerate("aabba")]
    collector = ExampleCollector(records, names)
    collector.update([0, 1], [1, 1], failed_paths=["1.mp4"])  # 0.mp4 a->b, 1.mp4 failed, 2.mp4 right
    collector.update([1, 0], [0, 1], failed_paths=[])
    assert collector.examples == {("a", "b"): ["0.mp4", "4.mp4"], ("b", "a"): ["3.mp4"]}
    collector.update([0], [1], failed_paths=[])  # past the end: the batches no longer line up
    assert not collector.aligned and collector.examples == {}
    assert top_confusions(np.array([[3, 2], [1, 4]]), names) == [("a", "b", 2), ("b", "a", 1)]
