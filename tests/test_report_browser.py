"""The report in a real browser: headless Chromium opens the file from disk, every <img>
decodes to a non-empty picture, and a screenshot renders.

Chromium is installed once per session (Debian's ``chromium`` package, as root) when missing;
the tests skip, with the reason, only where it cannot be installed.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cld_lake.report import build_report
from tests.test_report_page import rich_lake

CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var found = Array.prototype.map.call(document.images, function (img) {
    return {alt: img.alt, complete: img.complete, w: img.naturalWidth, h: img.naturalHeight};
  });
  var out = document.createElement('pre');
  out.id = 'img-check';
  out.textContent = JSON.stringify(found);
  document.body.appendChild(out);
});
</script>"""


def _install_chromium() -> str | None:
    """Path of a chromium binary, installing Debian's package if needed; None if impossible."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    for step in ([install], [["apt-get", "update"], install]):
        try:
            for cmd in step:
                subprocess.run(cmd, env=env, capture_output=True, timeout=900, check=True)
        except (subprocess.SubprocessError, OSError):
            continue
        if shutil.which("chromium"):
            return shutil.which("chromium")
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    path = _install_chromium()
    if path is None:
        pytest.skip(
            "chromium is not installed and `apt-get install chromium` failed (not root, or no package source)"
        )
    return path


def _run(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("browser")
    lake, _ = rich_lake(d / "lake")
    return build_report(lake, d / "report.html")


def test_every_image_decodes_in_chromium(chromium, report, tmp_path):
    page = report.read_text()
    expected = re.findall(r'<img [^>]*alt="([^"]*)"', page)
    assert len(expected) == 6  # with the per-class share of cld <= 0
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", CHECK_SCRIPT + "</body>"))
    r = _run(chromium, tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom",
             probe.as_uri())  # fmt: skip
    match = re.search(r'<pre id="img-check">(.*?)</pre>', r.stdout, flags=re.S)
    assert match, f"no result from the page; chromium said: {r.stderr[-2000:]}"
    images = json.loads(html.unescape(match.group(1)))
    assert [i["alt"] for i in images] == [html.unescape(a) for a in expected]
    for image in images:
        assert image["complete"] and image["w"] > 100 and image["h"] > 100, image


def test_every_image_is_a_non_empty_picture(report):
    import base64
    import io

    from matplotlib.image import imread

    blobs = re.findall(r'src="data:image/png;base64,([^"]+)"', report.read_text())
    assert len(blobs) == 6
    for blob in blobs:
        pixels = imread(io.BytesIO(base64.b64decode(blob)), format="png")
        colours = len({tuple(p) for p in pixels[::7, ::7].reshape(-1, pixels.shape[2])})
        assert colours > 10  # drawn lines, points and text, not a blank canvas


def test_screenshot_renders(chromium, report, tmp_path):
    shot = tmp_path / "report.png"
    r = _run(chromium, tmp_path / "profile", "--hide-scrollbars", "--window-size=1200,3600",
             f"--screenshot={shot}", report.as_uri())  # fmt: skip
    assert shot.exists() and shot.stat().st_size > 50_000, r.stderr[-2000:]
    keep = os.environ.get("CLD_LAKE_REPORT_SHOT")  # to look at it: CLD_LAKE_REPORT_SHOT=path
    if keep:
        shutil.copy(shot, keep)
