"""The web page in a real browser: headless Chromium (Debian's `chromium` + `chromium-driver`, driven by Selenium)
uploads a test image, reads the caption, hovers a word and reads its attention map off the page's canvas.
`.ci/run` installs Chromium first; the test skips where there is none. CAPTIONER_SCREENSHOT=PATH keeps a
screenshot of the page with the caption and the first word's attention map."""

import os
import shutil

import pytest

webdriver = pytest.importorskip("selenium.webdriver")
uvicorn = pytest.importorskip("uvicorn")

from conftest import serving  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="no chromium/chromedriver (apt-get install chromium chromium-driver)"
)


@pytest.fixture(scope="module")
def page_url(attention_run, vqa_run):
    from captioner.run import load_run
    from captioner.serving.serve import ServeConfig, Service

    service = Service(load_run(attention_run), load_run(vqa_run, task="vqa"), ServeConfig())
    service.warm_up()
    with serving(service) as url:
        yield f"{url}/"


def test_upload_caption_and_attention_map_in_chromium(page_url, tiny_data, tmp_path):
    from selenium.webdriver.chrome.service import Service as DriverService
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=DriverService(DRIVER), options=options)
    try:
        browser.set_window_size(900, 900)
        browser.get(page_url)
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: "px" in b.find_element(By.ID, "info").text)
        image = sorted((tiny_data / "images").glob("test_*.png"))[0]
        browser.find_element(By.ID, "file").send_keys(str(image))
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#caption span.word"))
        words = [span.text for span in browser.find_elements(By.CSS_SELECTOR, "#caption span.word")]
        assert words and all(words)
        ActionChains(browser).move_to_element(browser.find_elements(By.CSS_SELECTOR, "#caption span.word")[0]).perform()
        wait.until(lambda b: b.find_element(By.ID, "overlay").get_attribute("data-word") == "0")
        # The overlay now holds the map: some of its pixels are painted, with varying strength.
        alphas = browser.execute_script(
            "const c = document.getElementById('overlay'); const d = c.getContext('2d').getImageData(0, 0, c.width, "
            "c.height).data;"
            "const a = []; for (let i = 3; i < d.length; i += 4) a.push(d[i]); return [Math.max(...a), a.filter(x => x "
            "> 0).length, a.length];"
        )
        assert alphas[0] > 0 and 0 < alphas[1] <= alphas[2]
        browser.save_screenshot(str(tmp_path / "page.png"))
        if os.environ.get("CAPTIONER_SCREENSHOT"):  # docs/serve_page.png was made this way
            shutil.copyfile(tmp_path / "page.png", os.environ["CAPTIONER_SCREENSHOT"])
        # A question about the same photo.
        browser.find_element(By.ID, "question").send_keys("how many shapes are there?")
        browser.find_element(By.ID, "ask").click()
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#answers li")) == 5)
        # A file that is not an image: a one-line error on the page, and the page still works after.
        bad = tmp_path / "notes.png"
        bad.write_text("not an image")
        browser.find_element(By.ID, "file").send_keys(str(bad))
        wait.until(lambda b: "not a JPEG, PNG" in b.find_element(By.ID, "error").text)
    finally:
        browser.quit()
