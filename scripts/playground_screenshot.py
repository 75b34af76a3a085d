#!/usr/bin/env python3
"""Regenerate docs/playground.png: the playground showing an upscaler result, as the README shows it.

    .venv/bin/python scripts/playground_screenshot.py [output.png]

Starts `ferry serve` with the example apps, draws an input with the text-to-image app, uploads it
through the upscaler's form in headless chromium (Debian's `chromium` and `chromium-driver`, which
`make install` installs), runs it, and saves the whole page once the result has loaded.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

# The browser the playground's tests drive, and their full-page capture: one way to start and shoot it.
sys.path.append(str(Path(__file__).resolve().parents[1]))

import httpx
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from ferry.testing import StackProcess
from tests.browser.conftest import headless_chromium
from tests.browser.page import full_page_png

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "playground.png"
EXAMPLE_APPS = (
    "ferry.inference.apps.upscale:Upscaler",
    "ferry.inference.apps.text_to_image:TextToImage",
    "ferry.inference.apps.text_to_video:TextToVideo",
    "ferry.inference.apps.text_to_audio:TextToAudio",
)
INPUT = {"prompt": "a ferry at dawn", "width": 192, "height": 128, "seed": 7, "steps": 60}


def main() -> int:
    output = Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT
    with tempfile.TemporaryDirectory() as folder:
        apps = [flag for app in EXAMPLE_APPS for flag in ("--app", app)]
        with StackProcess(["--data-dir", str(Path(folder) / "data"), *apps]) as stack:
            drawn = httpx.post(f"{stack.cdn_url}/run/ferry/text-to-image", json=INPUT, timeout=120)
            drawn.raise_for_status()
            picture = Path(folder) / "ferry-at-dawn.png"
            picture.write_bytes(httpx.get(drawn.json()["image"]["url"]).raise_for_status().content)

            browser = headless_chromium()
            try:
                browser.get(f"{stack.cdn_url}/playground#/upscaler/")
                wait = WebDriverWait(browser, 60, poll_frequency=0.1)
                wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, '[data-path="image_url"] input[type=file]'))
                browser.find_element(By.CSS_SELECTOR, '[data-path="image_url"] input[type=file]').send_keys(
                    str(picture)
                )
                wait.until(lambda b: b.execute_script("return document.querySelector('.preview img')?.naturalWidth"))
                browser.find_element(By.ID, "submit").click()
                wait.until(
                    lambda b: b.execute_script("return document.querySelector('.output-image')?.naturalWidth") == 384
                )
                output.parent.mkdir(parents=True, exist_ok=True)
                output.write_bytes(full_page_png(browser))
            finally:
                browser.quit()
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
