"""The live page in a real browser (headless Chromium): during a short render it shows the image,
and both the image and the loss change as the render goes on; the inputs' thumbnails and the
output's path are there too.

Skipped when no Chromium is installed (Debian/Ubuntu: ``apt-get install chromium``). Set
``HIRES_NST_SCREENSHOT=docs/live-page.png`` to keep the screenshot it takes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.browser import Browser, find_chromium
from tests.helpers.paths import EXAMPLES

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium): "
                                                         "the live page is tested over plain HTTP only")

SHOWN = """(() => {
  const img = document.getElementById("preview");
  return {version: img.dataset.version, loaded: img.complete && img.naturalWidth > 0 && img.src !== "",
          loss: document.getElementById("loss").textContent, stage: document.getElementById("stage").textContent,
          curve: document.querySelectorAll("#curve polyline").length,
          inputs: [...document.querySelectorAll("#inputs img")].map((i) => i.complete ? i.naturalWidth : 0),
          captions: [...document.querySelectorAll("#inputs figcaption")].map((c) => c.textContent),
          output: document.getElementById("output").textContent};
})()"""


def _start_render(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    log = tmp_path / "log"
    command = [sys.executable, "-m", "hires_nst", "render", str(EXAMPLES / "tubingen.jpg"),
               str(EXAMPLES / "starry_night.jpg"), "-o", str(tmp_path / "out.png"), "--max-size", "128",
               "--min-size", "64", "--iterations", "400,200", "--tolerance", "0", "--web", "--port", "0",
               "--work-dir", str(tmp_path / "work")]
    process = subprocess.Popen(command, stderr=open(log, "w"), stdout=subprocess.DEVNULL, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        for line in log.read_text().splitlines():
            if line.startswith("live page: "):
                return process, line.split("live page: ", 1)[1]
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"the render printed no live page address:\n{log.read_text()}")


def test_the_page_shows_the_image_and_loss_changing_during_a_render(tmp_path: Path) -> None:
    process, url = _start_render(tmp_path)
    browser = Browser(CHROMIUM)
    try:
        browser.page("Page.enable")
        browser.page("Page.navigate", url=url)
        seen: list[dict] = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            shown = browser.evaluate(SHOWN)
            if shown and shown["loaded"] and shown["loss"] != "-":
                if not seen or (shown["version"], shown["loss"]) != (seen[-1]["version"], seen[-1]["loss"]):
                    seen.append(shown)
                versions = {s["version"] for s in seen}
                losses = {s["loss"] for s in seen}
                if len(versions) >= 3 and len(losses) >= 3 and shown["curve"]:
                    break
            time.sleep(0.25)
        else:
            raise AssertionError(f"the page did not change enough while the render ran: {seen}")
        time.sleep(1.5)  # let the image that came last finish drawing
        shot = browser.screenshot()
        last = browser.evaluate(SHOWN)
    finally:
        browser.close()
        process.terminate()
        process.wait(timeout=120)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    assert last["inputs"] == [256, 256]  # both 512 px inputs, served at 256 px
    assert last["captions"] == ["photo: tubingen.jpg", "painting: starry_night.jpg"]
    assert last["output"] == f"{tmp_path / 'out.png'} (written when the render finishes)"
    (tmp_path / "live-page.png").write_bytes(shot)
    keep = os.environ.get("HIRES_NST_SCREENSHOT")
    if keep:
        Path(keep).write_bytes(shot)
