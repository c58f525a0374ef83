"""report.html beside report.json: the digits CNN (two of its layers renamed to HTML/script
payloads) through the CLI for x86 and arm INT8 (.tflite and ncnn); the page parses, shows report.json's figures (sizes,
ratios, cosines, each artifact's row, each layer's SQNR), escapes every name, and renders in a real
headless Chromium without a console error (skipped, saying so, where Chromium is absent: `make
test` installs it)."""

from __future__ import annotations

import html.parser
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from autoglm_compress.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "digits_cnn.pt"
CALIB = ROOT / "examples" / "digits_calib.npz"
EVAL = ROOT / "examples" / "digits_eval.npz"
EVIL = "<script>alert(1)</script>"  # a quantized layer: its SQNR bar's label
EVIL_KEPT = "\"><img src=x onerror=alert(2)>&amp;"  # kept FP32: the float-layers table
VOID = {"meta", "br", "img", "hr", "input", "link"}  # HTML void elements; SVG ones self-close


class Page(html.parser.HTMLParser):
    """Walks the page: checks every element closes in order, collects text, tables, SVG labels
    and anything a script could hide in (script elements, on* attributes, external URLs)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.text, self.tables, self.svgs = [], [], [], []  # svgs: each one's texts
        self.bad: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "script" or any(k.startswith("on") for k, _ in attrs):
            self.bad.append(f"<{tag} {attrs}>")
        for k, v in attrs:
            if k in ("src", "href") and not (v or "").startswith("#"):
                self.bad.append(f"{k}={v}")
        if tag == "svg":
            self.svgs.append([])
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-5:])
        self.stack.pop()
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self.stack and self.stack[-1] == "text":
            self.svgs[-1].append(data)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """-o after the CLI run; the model: the demo CNN with two layers renamed, in a file whose
    name has HTML's special characters."""
    from autoglm_compress import load
    from autoglm_compress.ir_utils import save_atomic
    from autoglm_compress.pipeline import Pipeline, build_passes

    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("ncnn")
    tmp = tmp_path_factory.mktemp("html")
    model = load(DEMO)
    Pipeline(build_passes(["cleanup", "fold_bn"]), progress=False).run(model)  # names kept after
    convs = [n for n in model.graph if n.op_type == "Conv"]
    convs[0].name, convs[2].name = EVIL, EVIL_KEPT
    src = save_atomic(model, tmp / "digits <b>&'q\".onnx")
    out = tmp / "out"
    code = main([str(src), "--int8", "--target", "x86", "--target", "arm", "--format", "all",
                 "--calib", str(CALIB),
                 "--eval", str(EVAL), "--samples", "16", "--latency-repeats", "3",
                 "--verify-arm", "off", "--keep-fp32", EVIL_KEPT, "--max-size", "0.95",
                 "-o", str(out)])
    assert code == 0
    page = Page()
    page.feed((out / "report.html").read_text())
    page.close()
    return out, json.loads((out / "report.json").read_text()), page


def test_html_beside_json_parses_and_has_no_active_content(run):
    out, report, page = run
    assert page.stack == [] and page.bad == []
    assert report["run"]["id"] in "".join(page.text)
    manifest = json.loads((out / ".autoglm-manifest.json").read_text())
    assert "report.html" not in manifest["files"]  # the artifacts only, as before
    assert not list(out.glob(".*.tmp")) and not list(out.glob(".autoglm-staging-*"))


def _table(page: Page, first_header: str, column: str) -> list[dict]:
    """The rows of every table whose header starts with ``first_header`` and has ``column``."""
    return [dict(zip(t[0], r)) for t in page.tables if t and t[0][0] == first_header
            and column in t[0] for r in t[1:]]


def test_summary_shows_sizes_ratios_cosine_per_artifact(run):
    _, report, page = run
    src = report["model"]["size_bytes"]
    assert f"({src} bytes)" in "".join(page.text)
    rows = {r["artifact"]: r for r in _table(page, "artifact", "size vs source")}
    assert len(report["artifacts"]) == 3 and len(rows) == 3  # x86 .onnx, arm .tflite and ncnn
    for a in report["artifacts"]:
        r = rows[Path(a["path"]).name]
        assert (r["target"], r["precision"], r["bytes"]) == (a["target"], "int8",
                                                             str(a["size_bytes"]))
        assert r["size vs source"] == f"{a['size_bytes'] / src:.3f}×"
        assert float(r["worst cosine vs FP32"]) == pytest.approx(
            a["fidelity"]["cosine_min"], rel=1e-5)
        assert r["accuracy (FP32)"].startswith(f"{a['fidelity']['outputs']['output']['accuracy']:.4f}")
    for a in report["artifacts"]:  # per output, every figure report.json has for it
        m = a["fidelity"]["outputs"]["output"]
        row = next(r for r in _table(page, "artifact", "max_abs_err")
                   if r["artifact"] == Path(a["path"]).name)
        for k in ("cosine", "cosine_min", "cosine_mean", "max_abs_err", "top1_agreement"):
            if k in m:
                assert float(row[k]) == pytest.approx(m[k], rel=1e-5), k


def test_per_layer_sqnr_per_target_and_float_layers(run):
    _, report, page = run
    charts = [c for c in page.svgs if c[0].startswith("QDQ simulation")]  # per int8 artifact
    records = [p for p in report["passes"] if p["name"].startswith("quantize[")]
    assert len(charts) == len(records) == 3
    for a, rec, labels in zip(report["artifacts"], records, charts):
        fmt = (a.get("extra") or {}).get("format")
        assert rec["name"] == (f"quantize[{a['target']}/{fmt}]" if fmt else f"quantize[{a['target']}]")
        layers = rec["stats"]["layers"]
        assert len(layers) == 3 and all(x["sqnr_db"] > 10 for x in layers)  # 4 weighted, 1 kept
        assert {x["node"] for x in rec["stats"]["layers_fp32"]} == {EVIL_KEPT}
        for x in layers:  # each bar: its label, then its value
            i = labels.index(f"{x['node']} ({x['op']})")
            assert labels[i + 1] == f"{x['sqnr_db']:.3g}"
        assert labels[labels.index(EVIL_KEPT) + 1] == "FP32 (--keep-fp32)"
        assert f"{EVIL} (Conv)" in labels  # as text
    # the arm files read tensor by tensor in their runtimes: each fused conv+relu, pool, FC output
    x86, tfl, ncnn = report["artifacts"]
    assert "layer_error" not in x86["extra"]  # the QDQ model itself: the figures above are its own
    for a, runtime in ((tfl, "LiteRT"), (ncnn, "ncnn")):
        le = a["extra"]["layer_error"]
        got = {t["node"]: t["sqnr_db"] for t in le["tensors"]}
        assert le["samples"] == 8 and le["runtime"].startswith(runtime)
        assert len(got) >= 5 and "/fc/Gemm" in got and all(v > 15 for v in got.values()), got
        # the layers adding the most error, named under the chart (each adds to its inputs')
        assert 1 <= len(le["worst"]) <= 3 and all(w["node"] in got for w in le["worst"])
        assert all(w["input_sqnr_db"] is None or w["sqnr_db"] < w["input_sqnr_db"]
                   for w in le["worst"]), le["worst"]
        assert (f"Worst layers (where the SQNR falls most, worst first): "
                f"{' → '.join(le['worst'][0]['nodes'])} ({le['worst'][0]['op']})") \
            in "".join(page.text)
        chart = next(c for c in page.svgs
                     if c[0].startswith(f"in the artifact's runtime: {runtime}"))
        for t in le["tensors"]:
            label = f"{t['node']} ({t['op']})"
            i = chart.index(label if len(label) <= 40 else "…" + label[-39:])  # cut to fit
            assert chart[i + 1] == f"{t['sqnr_db']:.3g}"
        if runtime == "LiteRT":  # every tensor compared
            assert le["not_compared"] == 0 and "/features/2/Relu" in got
        else:  # the first conv's blob, requantized to int8 codes for the int8 second conv
            assert le["not_compared"] >= 1 and "/features/2/Relu" not in got
    kept = [r for r in _table(page, "layer", "why float") if r["layer"] == EVIL_KEPT]
    assert len(kept) >= 3 and all("--keep-fp32" in r["why float"] for r in kept)


def test_gates_pass_and_fail(run):
    from autoglm_compress.report_html import render_html

    _, report, page = run
    rows = _table(page, "budget", "result")
    assert len(report["gates"]) == len(rows) == 3
    for g, r in zip(report["gates"], rows):
        assert (r["budget"], r["artifact"], r["result"]) == ("--max-size", g["artifact"], "PASS")
        assert float(r["value"]) == pytest.approx(g["value"], rel=1e-5) and g["value"] < 0.95
    failed = json.loads(json.dumps(report))
    failed["gates"][1].update(passed=False, message=f"{EVIL} too big")
    again = Page()
    again.feed(render_html(failed))
    rows = _table(again, "budget", "result")
    assert [r["result"] for r in rows] == ["PASS", "FAIL", "PASS"] and again.bad == []
    assert rows[1]["detail"] == f"{EVIL} too big"
    assert "2 of 3 passed." in "".join(again.text)


def test_every_user_string_is_escaped(run):
    out, _, page = run
    raw = (out / "report.html").read_text()
    assert EVIL not in raw and "<img" not in raw and "digits <b>" not in raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in raw
    text = "".join(page.text)
    assert EVIL in text and EVIL_KEPT in text and "digits <b>&'q\".onnx" in text


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (make test installs Debian's chromium: "
                    "apt-get install -y chromium)")
    return exe


def _headless(exe: str, url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", "--enable-logging=stderr", "--v=0", *args, url],
                          capture_output=True, text=True, timeout=60)


def _console_errors(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines()
            if "CONSOLE" in ln or "Uncaught" in ln or "Refused to" in ln]


def test_renders_in_headless_chromium_without_console_errors(run, tmp_path):
    from PIL import Image

    exe = _chromium()
    out, report, _ = run
    # the check itself: a page with a failing script is reported on stderr
    (tmp_path / "bad.html").write_text("<html><body><script>undefinedCall()</script></body></html>")
    assert _console_errors(_headless(exe, (tmp_path / "bad.html").as_uri(), "--dump-dom").stderr)

    png = tmp_path / "page.png"
    r = _headless(exe, (out / "report.html").as_uri(), "--window-size=1200,2400",
                  f"--screenshot={png}")
    assert r.returncode == 0 and png.is_file(), r.stderr[-2000:]
    assert _console_errors(r.stderr) == []
    px = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    assert px.shape[:2] == (2400, 1200)
    ink = (np.abs(px - 255).sum(axis=2) > 60).mean()  # pixels far from white
    orange = (np.abs(px - [0xE0, 0x7B, 0x24]).sum(axis=2) < 30).sum()  # the int8 bars
    assert 0.01 < ink < 0.6 and orange > 200, (ink, orange)

