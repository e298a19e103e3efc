"""The page at ``/`` in headless Chromium: drop an image, see the top label drawn.

Playwright drives the system's Chromium (Debian: ``apt-get install chromium``); no browser
is downloaded. The screenshot goes to ``tests/artifacts/serve_page.png`` (or
``$MOBILENETS_ARTIFACTS``). Skipped when Playwright or Chromium is missing.
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT, shared_path

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")

ARTIFACTS = Path(os.environ.get("MOBILENETS_ARTIFACTS", ROOT / "tests" / "artifacts"))
CHROMIUM = os.environ.get("MOBILENETS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")

DROP = """([data, name, type]) => {
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], name, { type }));
  const zone = document.getElementById("drop");
  for (const t of ["dragenter", "dragover", "drop"]) {
    zone.dispatchEvent(new DragEvent(t, { dataTransfer: dt, bubbles: true, cancelable: true }));
  }
}"""


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs a system Chromium (apt-get install chromium)")
def test_page_drop_image_shows_top_label():
    from mobilenets.auto import load_predictor
    from mobilenets.serve.app import ServeConfig, create_app, serve_in_thread
    from mobilenets.tasks.classify import classify_batch

    p = load_predictor(weights=shared_path("models", "mobilenet_v1_0.25_224_1_default_1.tflite"), backend="litert")
    image = shared_path("images", "grace_hopper.bmp")
    top = classify_batch(p, p.transform(image)[None].numpy(), 1)[0][0].label
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "serve_page.png"
    with serve_in_thread(create_app(p, ServeConfig())) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/", wait_until="networkidle")
            sync_api.expect(page.locator("#model")).to_contain_text(p.name, timeout=15_000)
            page.evaluate(DROP, [base64.b64encode(image.read_bytes()).decode(), image.name, "image/bmp"])
            first = page.locator("#output .bar .name").first
            sync_api.expect(first).to_contain_text(top, timeout=30_000)
            sync_api.expect(page.locator("#latency")).to_contain_text("ms")
            page.screenshot(path=str(shot), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
