#!/usr/bin/env python
"""A screenshot of `captioner serve`'s page: a photo uploaded, its caption, the beam alternatives and the
attention map of one word, taken with headless Chromium (Debian's chromium + chromium-driver) via Selenium.

    python scripts/screenshot_page.py --run runs/f8k-sat --image photo.jpg --word 1 --out docs/serve_page.png
    python scripts/screenshot_page.py --run runs/f8k-sat --vqa-run runs/vqa-coco --question "is there a dog ?" --image
    photo.jpg --out docs/serve_vqa.png
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import serving  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service as DriverService  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from captioner.run import load_run  # noqa: E402
from captioner.serving.serve import ServeConfig, Service  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--word", type=int, default=0, help="which word's attention map to show")
    parser.add_argument("--out", required=True)
    parser.add_argument("--vqa-run", default=None, help="also load this VQA run and ask --question about the photo")
    parser.add_argument("--question", default="is there a person ?")
    args = parser.parse_args()
    service = Service(load_run(args.run), load_run(args.vqa_run, task="vqa") if args.vqa_run else None, ServeConfig())
    service.warm_up()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    with serving(service) as url:
        browser = webdriver.Chrome(service=DriverService(shutil.which("chromedriver")), options=options)
        try:
            browser.set_window_size(900, 1150 if args.vqa_run else 1000)
            browser.get(f"{url}/")
            wait = WebDriverWait(browser, 120)
            wait.until(lambda b: "px" in b.find_element(By.ID, "info").text)
            browser.find_element(By.ID, "file").send_keys(str(Path(args.image).resolve()))
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#caption span.word"))
            word = browser.find_elements(By.CSS_SELECTOR, "#caption span.word")[args.word]
            ActionChains(browser).move_to_element(word).perform()
            wait.until(lambda b: b.find_element(By.ID, "overlay").get_attribute("data-word") == str(args.word))
            if args.vqa_run:
                browser.find_element(By.ID, "question").send_keys(args.question)
                browser.find_element(By.ID, "ask").click()
                wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#answers li"))
                print("answers: " + "; ".join(li.text for li in browser.find_elements(By.CSS_SELECTOR, "#answers li")))
            browser.save_screenshot(args.out)
            print(
                f"wrote {args.out}: "
                f"{' '.join(s.text for s in browser.find_elements(By.CSS_SELECTOR, '#caption span.word'))}"
            )
        finally:
            browser.quit()


if __name__ == "__main__":
    main()
