"""Three slips of the report page seen in a browser (issue 22): ``range [None, None]`` for a
score without bounds, a ``noisy_share_lowest`` header over the highest-scored rows of a
higher_harder score, and a splits table running off the page."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

from cld_lake.report import build_report
from cld_lake.score import compute_scores
from tests.test_report_browser import _run, chromium  # noqa: F401  (fixture)
from tests.test_report_page import rich_lake


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    """The report of a lake with real scores: unbounded (mean_loss), bounded (forgetting,
    confidence), higher_harder and higher_keep, and noisy flags."""
    d = tmp_path_factory.mktemp("slips")
    lake, _ = rich_lake(d / "lake")
    compute_scores(lake, "mean_loss,forgetting,confidence")
    return build_report(lake, d / "report.html")


def _score_rows(text: str) -> dict[str, list[str]]:
    """The cells of the scores table, by score name."""
    section = text.split("<h2>Scores</h2>", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", section)
    header = re.findall(r"<th>(.*?)</th>", rows[0])
    cells = {}
    for row in rows[1:]:
        values = [html.unescape(v) for v in re.findall(r"<td>(.*?)</td>", row)]
        cells[values[0]] = dict(zip(header, values, strict=True))
    return cells


def test_range_shown_only_when_known(page) -> None:
    text = page.read_text()
    assert "None" not in text.split("<h2>Scores</h2>", 1)[1].split("</table>", 1)[0]
    rows = _score_rows(text)
    assert rows["mean_loss"]["range"] == "unbounded"
    assert rows["confidence"]["range"] == "[0, 1]"
    assert rows["forgetting"]["range"] == "[0, 8]"
    assert rows["cld"]["range"] == ""  # stored without a range: nothing to show


def test_range_text() -> None:
    from cld_lake.report._scores import range_text

    assert range_text([None, None]) == "unbounded"
    assert range_text([-1.0, 1.0]) == "[-1, 1]"
    assert range_text([0.0, None]) == "[0, +inf)"
    assert range_text([None, 0.5]) == "(-inf, 0.5]"
    assert range_text(None) == range_text("") == ""


def test_detection_tables_are_headed_by_what_they_list(page) -> None:
    text = page.read_text()
    heads = re.findall(r"<h4>(\w+): noisy labels among the (\w+)-scored samples</h4>"
                       r"<div class='wide'><table><tr>(.*?)</tr>", text)  # fmt: skip
    which = {name: (end, header) for name, end, header in heads}
    for name in ("mean_loss", "forgetting", "hardness"):  # higher_harder: the highest first
        end, header = which[name]
        assert end == "highest" and "<th>noisy_share_highest</th>" in header, name
        assert "lowest" not in header
    for name in ("cld", "confidence"):  # higher_keep: the lowest first
        end, header = which[name]
        assert end == "lowest" and "<th>noisy_share_lowest</th>" in header, name


MEASURE = """<script>
window.addEventListener('load', function () {
  var out = document.createElement('pre');
  out.id = 'widths';
  out.textContent = JSON.stringify(Array.prototype.map.call(
    document.querySelectorAll('div.wide'), function (box) {
      return {table: box.firstChild.scrollWidth, box: box.clientWidth,
              page: document.documentElement.clientWidth};
    }));
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.parametrize("width", [1200, 800])
def test_the_splits_table_fits_its_page(chromium, page, tmp_path, width) -> None:  # noqa: F811
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    r = _run(chromium, tmp_path / "profile", f"--window-size={width},900",
             "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())  # fmt: skip
    found = re.search(r'<pre id="widths">(.*?)</pre>', r.stdout, flags=re.S)
    assert found, r.stderr[-2000:]
    splits = json.loads(html.unescape(found.group(1)))[0]  # the first table: the splits
    assert splits["table"] <= splits["box"] <= splits["page"], splits
