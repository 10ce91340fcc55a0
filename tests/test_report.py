"""reports/report.html from the stages' reports; drawn in headless Chromium when it is installed."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import assert_user_error, invoke

CHROMIUM = next((path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None)
FIGURES = ["figure-balance", "figure-lengths", "figure-curves", "figure-confusion", "figure-reliability"]


@pytest.fixture(scope="module")
def report(project) -> Path:
    result = invoke("report", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "5 figures" in result.stdout
    return project / "reports" / "report.html"


def test_report_shows_every_part_and_is_self_contained(project, report):
    page = report.read_text(encoding="utf-8")
    for figure in FIGURES:
        assert re.search(rf'<figure id="{figure}"><svg', page), figure
    metrics = json.loads((project / "reports" / "evaluate.json").read_text())
    export = json.loads((project / "reports" / "export.json").read_text())
    assert f"{metrics['accuracy']:,.4f}" in page and f"{export['onnx_int8_accuracy']:,.4f}" in page
    for text in ("Class balance", "Text length", "Loss", "Confusion matrix", "most confident mistakes", "batch-1 latency", "max_epochs: 3",
                 "Reliability (test)", f"{metrics['ece']:,.4f}", f"{metrics['ece_uncalibrated']:,.4f}"):
        assert text in page, text
    # per-class rows, and the misclassified examples from errors.csv, escaped
    assert "<td>neg</td>" in page and "<td>pos</td>" in page
    import pandas as pd

    errors = pd.read_csv(project / "reports" / "errors.csv")
    assert len(errors) > 0 and f'<td class="text">{html.escape(errors["text"][0])}</td>' in page
    # no network at view time: nothing is loaded from anywhere
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script" not in page and "@import" not in page


def test_report_is_byte_stable(project, report, tmp_path):
    assert invoke("report", "--out", str(tmp_path / "again.html"), cwd=project).returncode == 0
    assert (tmp_path / "again.html").read_bytes() == report.read_bytes()


def test_report_shows_what_download_dropped_and_read(project, tmp_path):
    reports = tmp_path / "reports"
    shutil.copytree(project / "reports", reports)
    data = json.loads((reports / "data.json").read_text())
    assert data["duplicates"]["dropped"] is True and len(data["source_sha256"]) == 64
    kinds = ["train_within", "validation_within", "test_within", "train_in_test", "validation_in_test", "train_in_validation", "conflicting_labels"]
    data["duplicates"].update({kind: 1001 + i for i, kind in enumerate(kinds)})  # distinct, to see each one land
    (reports / "data.json").write_text(json.dumps(data))
    result = invoke("report", "--reports", str(reports), "--out", str(tmp_path / "r.html"), cwd=project)
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "r.html").read_text()
    for i, what in enumerate(["within train", "within validation", "within test", "train texts also in test",
                              "validation texts also in test", "train texts also in validation", "texts seen with more than one label"]):
        assert f'<td>{what}</td><td class="n">{1001 + i:,}</td>' in page, what
    assert ">dropped</th>" in page and f"sha256 <code>{data['source_sha256']}</code>" in page


def test_user_text_cannot_inject_html(project, tmp_path):
    reports = tmp_path / "reports"
    shutil.copytree(project / "reports", reports)
    # short tags are removed as the tokenizer removed them; what is left is escaped, never markup
    long_tag = '<script src="https://example.org/a-very-long-name-to-load.js">'
    (reports / "errors.csv").write_text(
        f'text,actual,predicted,confidence\n"<script>alert(1)</script><b>x</b> & {long_tag.replace(chr(34), chr(34) * 2)} <3",neg,pos,0.9\n'
    )
    result = invoke("report", "--reports", str(reports), "--out", str(tmp_path / "r.html"), cwd=project)
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "r.html").read_text()
    cell = page[page.index('<td class="text">') + len('<td class="text">') :]
    cell = cell[: cell.index("</td>")]
    assert "<" not in cell and "<script" not in page, cell  # escaped, so shown as text, never run
    assert html.unescape(cell) == f"alert(1) x & {long_tag} <3"


def test_mistakes_without_html_tags_and_cjk_class_names(project, tmp_path):
    """IMDB's <br /> is not shown; Chinese class names stay text, with CJK fonts to draw them."""
    reports = tmp_path / "reports"
    shutil.copytree(project / "reports", reports)
    names = {"neg": "负面", "pos": "正面"}
    for path in reports.rglob("*"):
        if path.suffix in (".json", ".csv"):
            text = path.read_text(encoding="utf-8")
            for old, new in names.items():
                text = re.sub(rf"(?<![A-Za-z]){old}(?![A-Za-z])", new, text)
            path.write_text(text, encoding="utf-8")
    errors = reports / "errors.csv"
    errors.write_text('text,actual,predicted,confidence\n"Loved it.<br /><br />Would watch again.",正面,负面,0.9\n', encoding="utf-8")
    result = invoke("report", "--reports", str(reports), "--out", str(tmp_path / "r.html"), cwd=project)
    assert result.returncode == 0, result.stderr
    assert "Glyph" not in result.stderr  # no warnings about fonts
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert '<td class="text">Loved it. Would watch again.</td>' in page and "&lt;br" not in page
    confusion = page[page.index('<figure id="figure-confusion">') :]
    confusion = confusion[: confusion.index("</figure>")]
    assert re.search(r"<text[^>]*>正面</text>", confusion) and re.search(r"<text[^>]*>负面</text>", confusion)
    assert "Noto Sans CJK SC" in confusion  # the browser looks for a font with the glyphs


def test_missing_reports_are_named(project, tmp_path):
    reports = tmp_path / "reports"
    shutil.copytree(project / "reports", reports)
    (reports / "export.json").unlink()
    result = invoke("report", "--reports", str(reports), "--out", str(tmp_path / "r.html"), cwd=project)
    assert_user_error(result, "export.json is missing", "export stage")
    assert not (tmp_path / "r.html").exists()


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_chromium_draws_the_figures(report, tmp_path):
    """Load the page in headless Chromium, measure every figure as laid out, and screenshot it."""
    probe = tmp_path / "probe.html"
    probe.write_text(
        f"""<!DOCTYPE html><html><body>
<iframe id="page" src="{report.as_uri()}" style="width:1200px;height:3000px"></iframe>
<pre id="result">pending</pre>
<script>
document.getElementById("page").addEventListener("load", () => {{
  const doc = document.getElementById("page").contentDocument;
  const figures = [...doc.querySelectorAll("figure")].map(figure => {{
    const svg = figure.querySelector("svg");
    const box = svg ? svg.getBoundingClientRect() : {{width: 0, height: 0}};
    const marks = svg ? [...svg.querySelectorAll("path, rect, use")].filter(e => {{
      const b = e.getBBox(); return b.width > 0 || b.height > 0; }}).length : 0;
    return {{id: figure.id, width: box.width, height: box.height, marks: marks}};
  }});
  document.getElementById("result").textContent = JSON.stringify(figures);
}});
</script></body></html>""",
        encoding="utf-8",
    )
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--allow-file-access-from-files"]
    dom = subprocess.run([*flags, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="result">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stderr[-2000:]
    figures = {f["id"]: f for f in json.loads(html.unescape(found.group(1)))}
    assert sorted(figures) == sorted(FIGURES)
    for figure in figures.values():
        assert figure["width"] > 150 and figure["height"] > 100, figure
        assert figure["marks"] >= 4, figure  # axes, bars, lines, cells: drawn, not empty

    screenshot = tmp_path / "report.png"
    subprocess.run([*flags, "--window-size=1200,3000", f"--screenshot={screenshot}", report.as_uri()], capture_output=True, timeout=120)
    from PIL import Image

    import numpy as np

    dark = float((np.asarray(Image.open(screenshot).convert("L")) < 200).mean())
    assert dark > 0.02, dark  # text, curves and the confusion matrix, not a blank page
