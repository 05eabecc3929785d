"""The editor page end to end in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium).

Starts ``scripts/app.py`` on a free port, uploads a real CelebA photo from ``../shared/celeba-real/``, moves the
Smiling slider with the keyboard, and checks that the shown face changes and that the Smiling predictor's score of
the shown face rises. The score needs real-face runs (``runs/vae/celeba-cpu64`` and ``runs/predictor/celeba-cpu64``,
only read: the editor writes into its own output folder); without them the page runs on a tiny synthetic VAE and
the score check skips. Skips, saying why, where the browser, its driver, Selenium, Gradio or the photos are missing.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_REAL

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
REAL_VAE, REAL_PREDICTOR = REPO / "runs/vae/celeba-cpu64", REPO / "runs/predictor/celeba-cpu64"


def _browser() -> tuple[str, str]:
    for module in ("selenium", "gradio"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (requirements.txt; make setup installs it)")
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists()
                                              else None)
    if browser is None or driver is None:
        pytest.skip("headless Chromium not found (apt-get install chromium chromium-driver; .ci/run does it)")
    return browser, driver


def _real_runs() -> bool:
    return all((run / "checkpoints" / "last.pt").is_file() for run in (REAL_VAE, REAL_PREDICTOR))


def _unsmiling_photo() -> Path:
    photos = SHARED_REAL / "identities"
    labels = photos / "labels.csv"
    if not labels.is_file():
        pytest.skip(f"real CelebA photos not found at {photos} (they live outside the repository)")
    with labels.open() as handle:
        for row in csv.DictReader(handle):
            if row.get("Smiling", "").strip() == "-1" and (photos / "img_align_celeba" / row["image_id"]).is_file():
                return photos / "img_align_celeba" / row["image_id"]
    pytest.skip(f"{labels}: no photo labelled not smiling")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page(tmp_path_factory, request):
    browser, driver_path = _browser()
    photo = _unsmiling_photo()
    root = tmp_path_factory.mktemp("app")
    if _real_runs():
        run = REAL_VAE
    else:
        from test_evaluate import train_vae

        run = root / "vae"
        train_vae(request.getfixturevalue("tiny_cache"), run)
    port = _free_port()
    log = (root / "app.log").open("w")
    server = subprocess.Popen([sys.executable, str(REPO / "scripts/app.py"), "--runs", str(run), "--out",
                               str(root / "out"), "--port", str(port), "--device", "cpu", "--max-upload-mb", "1"],
                              cwd=root, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    driver = None
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail(f"the app did not start: {(root / 'app.log').read_text()[-2000:]}")
                time.sleep(0.5)
        options = Options()
        options.binary_location = browser
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1000"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(driver_path), options=options)  # no driver download
        driver.get(url)
        yield {"driver": driver, "photo": photo, "root": root, "real": run == REAL_VAE, "out": root / "out"}
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _wait(condition, timeout: float = 120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting for the page")


def _shown(driver) -> str | None:
    from selenium.webdriver.common.by import By

    images = driver.find_elements(By.CSS_SELECTOR, "#face img")
    return images[0].get_attribute("src") if images else None


def _status(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, "status").text


def _pixels(src: str) -> np.ndarray:
    from PIL import Image

    with urllib.request.urlopen(src, timeout=10) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))


def _upload(driver, path: Path) -> None:
    from selenium.webdriver.common.by import By

    _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))
    driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(path))


def test_bad_upload_shows_a_message_then_a_photo_is_edited(page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = page["driver"]
    fake = page["root"] / "notes.png"
    fake.write_text("this is not a picture")
    _upload(driver, fake)
    _wait(lambda: "not an image" in _status(driver))
    assert "Traceback" not in driver.page_source
    driver.find_element(By.CSS_SELECTOR, "#upload button[aria-label='Clear']").click()

    _upload(driver, page["photo"])  # the page keeps working after the bad upload
    before = _wait(lambda: _shown(driver))
    assert "ms" in _status(driver)
    slider = driver.find_element(By.CSS_SELECTOR, "#slider-Smiling input[type=range]")
    slider.send_keys(Keys.END)  # the keyboard's End key: the slider's maximum, +3
    after = _wait(lambda: (src := _shown(driver)) != before and src)
    assert float(slider.get_attribute("value")) == 3.0
    first, edited = _pixels(before), _pixels(after)
    change = float(np.abs(first.astype(int) - edited.astype(int)).mean())  # mean pixel change (0..255)
    assert first.shape == edited.shape and change > (1.0 if page["real"] else 0.0), change  # tiny VAE: faint
    assert _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#pasted img"))
    page["images"] = (first, edited)
    # every file the app wrote lies in its output folder (Gradio's uploads included)
    outside = [p for p in page["root"].rglob("*") if p.is_file() and not p.is_relative_to(page["out"])
               and p.name not in ("app.log", "notes.png") and "vae" not in p.relative_to(page["root"]).parts]
    assert not outside, outside


def test_smiling_slider_raises_the_smiling_score(page):
    if "images" not in page:
        pytest.skip("the edit test did not run")
    if not page["real"]:
        pytest.skip(f"the smile score needs the real-face runs {REAL_VAE} and {REAL_PREDICTOR}; a tiny synthetic "
                    "VAE does not model real smiles")
    import torch

    from common.attributes import attribute_index
    from common.predictor import load_predictor, score_images

    first, edited = page["images"]
    images = torch.from_numpy(np.stack([first, edited]))  # uint8 [2, H, W, 3]
    smiling = score_images(load_predictor(REAL_PREDICTOR), images)["probs"][:, attribute_index("Smiling")]
    assert smiling[1] > smiling[0] + 0.1, smiling.tolist()
