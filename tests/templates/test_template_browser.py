"""The shipped templates' previews in a real headless browser (Debian's chromium).

Each shipped template is rendered for a sample profile, screenshotted at desktop (1200 px) and mobile (375 px) widths, and
measured with a script: the page must not scroll sideways at 375 px.
"""

from __future__ import annotations

import json
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from carepost.templates import TemplateLibrary
from carepost.templates.samples import find_sample, load_samples
from carepost.templates.tooling import PREVIEW_WIDTHS, render_sample, write_preview
from PIL import Image

from .conftest import PRACTICE

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium is not installed (.ci/run installs Debian's chromium)",
)
# Every shipped template once, plus the Spanish version and the sample
# with a long unbroken name, which would widen a careless layout.
PREVIEWS = (
    ("checkup_reminder", "en-complete"),
    ("diabetes_education", "en-complete"),
    ("missed_appointment", "es-complete"),
    ("missed_appointment", "hostile-input"),
    ("refill_reminder", "en-complete"),
)
HEIGHT = 1000
# The layout's button colour (#0b6e99) proves the inlined styles applied.
BUTTON = (0x0B, 0x6E, 0x99)
_MEASURE = re.compile(r'<pre id="carepost-measure">(\d+) (\d+)</pre>')
# Headless chromium keeps windows at least 500 px wide, so the message is
# laid out in a 375 px iframe (srcdoc, so the script may read it) and the
# script writes the frame's scroll and client widths into the page.
MEASURE_PAGE = """<!DOCTYPE html><html><body style="margin: 0">
<iframe id="frame" width="375" height="900" style="border: 0"></iframe>
<script>
var frame = document.getElementById("frame");
frame.onload = function () {
  var root = frame.contentDocument.documentElement;
  var out = document.createElement("pre");
  out.id = "carepost-measure";
  out.textContent = root.scrollWidth + " " + root.clientWidth;
  document.body.appendChild(out);
};
frame.srcdoc = %s;
</script></body></html>
"""


def chromium(tmp_path: Path, width: int, *action: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"profile-{width}-{len(action[0])}-{abs(hash(action))}"
    return subprocess.run(
        [
            str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--hide-scrollbars",
            f"--user-data-dir={profile}", f"--window-size={width},{HEIGHT}", *action,
        ],
        capture_output=True, text=True, timeout=60, check=True,
    )


@pytest.fixture(scope="module")
def previews(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Write every (template, sample) preview; return its HTML file by id."""
    library = TemplateLibrary(
        Path(__file__).resolve().parents[2] / "templates" / "library", PRACTICE
    )
    out = tmp_path_factory.mktemp("previews")
    files = {}
    samples = load_samples()
    for name, sample_id in PREVIEWS:
        sample = find_sample(samples, sample_id)
        content = render_sample(library.get(name), sample, PRACTICE)
        files[f"{name}.{sample_id}"] = write_preview(content, out, f"{name}.{sample_id}").html
    return files


def screenshot(tmp_path: Path, page: Path, width: int) -> Path:
    png = tmp_path / f"{page.stem}.{width}.png"
    chromium(tmp_path, width, f"--screenshot={png}", page.as_uri())
    return png


def measure(tmp_path: Path, page: Path) -> tuple[int, int]:
    """Return the scroll and client width of ``page`` laid out 375 px wide."""
    probe = tmp_path / f"{page.stem}.measure.html"
    # "<\/" keeps a "</script>" inside the message from ending the script.
    source = json.dumps(page.read_text("utf-8")).replace("</", "<\\/")
    probe.write_text(MEASURE_PAGE % source, "utf-8")
    result = chromium(tmp_path, 800, "--dump-dom", probe.as_uri())
    found = _MEASURE.search(result.stdout)
    assert found is not None, "the measuring script did not run"
    return int(found[1]), int(found[2])


def colour_counts(png: Path) -> dict[tuple[int, int, int], int]:
    with Image.open(png) as image:
        counts = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert counts is not None
    return {colour: count for count, colour in counts}


@pytest.mark.parametrize("preview_id", [f"{name}.{sample}" for name, sample in PREVIEWS])
def test_preview_in_browser(
    previews: dict[str, Path], tmp_path: Path, preview_id: str
) -> None:
    page = previews[preview_id]
    widths = [width for _, width in PREVIEW_WIDTHS]
    with ThreadPoolExecutor(max_workers=2) as pool:
        shots = list(pool.map(lambda width: screenshot(tmp_path, page, width), widths))
        scroll_width, client_width = pool.submit(measure, tmp_path, page).result()

    for png, width in zip(shots, widths):
        with Image.open(png) as image:
            assert image.size == (width, HEIGHT)
        counts = colour_counts(png)
        assert len(counts) > 20, f"{png.name} looks blank"
        assert counts.get(BUTTON, 0) > 400, f"{png.name} has no styled button"
    assert client_width == 375
    assert scroll_width <= client_width, "the page scrolls sideways at 375 px"
