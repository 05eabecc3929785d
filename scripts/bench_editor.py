"""Slider-to-image latency of the interactive editor (docs/editor.md): the median over N slider moves per run.

    python scripts/bench_editor.py --runs runs/vae/celeba-cpu64 runs/glow/celeba-cpu64 --moves 40

One "move" is what the page does when a slider moves: compose the sliders (Smiling walking from -3 to 3 with pose
held at -1 and Male kept), decode, paste the edit back into the photo (with --photo) and encode the shown PNGs,
as Gradio sends them. The latent and the directions are found first (once per run, as on the page) and are not
part of the timing; their times are printed separately. It writes only under --out (default: a temporary folder).

With --browser URL it times the whole round trip instead, on a page already running (scripts/app.py): headless
Chromium uploads --photo, presses the Smiling slider's arrow key N times and waits each time until the shown image
changes (Gradio's queue, the PNG, the browser's fetch included; polled every 10 ms).
"""

import argparse
import io
import statistics
import tempfile
import time

import torch

from common.cli import run_main
from pipeline.editor import Editor, display_image


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", help="trained run folders (required without --browser)")
    parser.add_argument("--moves", type=int, default=40, help="slider moves timed per run (default 40)")
    parser.add_argument("--photo", default=None, help="edit this photo (aligned, pasted back); default a sample")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, mps")
    parser.add_argument("--max-train-images", type=int, default=2000,
                        help="training images encoded to find a direction (default 2000: the fit is not timed)")
    parser.add_argument("--out", default=None, help="output folder for found directions (default a temp folder)")
    parser.add_argument("--browser", default=None, metavar="URL", help="time the page at URL in headless Chromium")
    args = parser.parse_args()
    if args.browser:
        return browser_round_trip(args.browser, args.photo, args.moves)
    if not args.runs:
        parser.error("--runs RUN [RUN ...] is required (or --browser URL)")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or tempfile.mkdtemp(prefix="bench_editor_")
    editor = Editor(args.runs, out, args.device, max_train_images=args.max_train_images)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {editor.device}")
    for name in editor.runs:
        face = editor.photo_face(args.photo) if args.photo else editor.sample_face(0)
        start = time.perf_counter()
        editor.latent(name, face)
        encode_s = time.perf_counter() - start
        start = time.perf_counter()
        editor.render(name, face, {"Smiling": 1.0, "pose": -1.0, "Male": 0.5}, keep=["Male"])  # finds directions
        editor.render(name, face, {"Smiling": 1.0, "pose": -1.0}, keep=["Male"])
        first_s = time.perf_counter() - start
        times = []
        for i in range(args.moves):
            strength = -3.0 + 6.0 * i / max(1, args.moves - 1)
            start = time.perf_counter()
            rendered = editor.render(name, face, {"Smiling": strength, "pose": -1.0}, keep=["Male"])
            for image in (display_image(rendered.face), rendered.pasted):
                if image is not None:
                    image.save(io.BytesIO(), format="PNG")
            times.append(time.perf_counter() - start)
        model = editor.runs[name].model
        print(f"{name}: {model.resolution}x{model.resolution}, latent {model.latent_dim}: slider-to-image median "
              f"{1000 * statistics.median(times):.1f} ms, p90 {1000 * sorted(times)[int(0.9 * len(times))]:.1f} ms "
              f"over {len(times)} moves (first latent {encode_s:.2f} s, first directions {first_s:.2f} s)")
    return 0


def browser_round_trip(url: str, photo: str | None, moves: int) -> int:
    """Median key-press-to-new-image time of the Smiling slider on a running page, in headless Chromium."""
    import shutil
    from pathlib import Path

    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    options = Options()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                              options=options)

    def wait_for(condition, timeout=600.0):
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if value := condition():
                return value
            time.sleep(0.01)
        raise TimeoutError("the page did not answer")

    def shown():
        images = driver.find_elements(By.CSS_SELECTOR, "#face img")
        return images[0].get_attribute("src") if images else None

    try:
        driver.get(url)
        if photo:
            wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))
            driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(Path(photo).resolve()))
        else:
            wait_for(lambda: driver.find_elements(By.ID, "sample"))[0].click()
        wait_for(shown)
        slider = driver.find_element(By.CSS_SELECTOR, "#slider-Smiling input[type=range]")
        slider.send_keys(Keys.ARROW_RIGHT)  # the first move finds the direction: not timed
        wait_for(lambda: "ms" in driver.find_element(By.ID, "status").text and shown())
        times = []
        for i in range(moves):
            before = shown()
            start = time.perf_counter()
            slider.send_keys(Keys.ARROW_RIGHT if i % 20 < 10 else Keys.ARROW_LEFT)
            wait_for(lambda before=before: shown() != before)
            times.append(time.perf_counter() - start)
    finally:
        driver.quit()
    print(f"{url}: key press to new image in the browser: median {1000 * statistics.median(times):.0f} ms, "
          f"p90 {1000 * sorted(times)[int(0.9 * len(times))]:.0f} ms over {len(times)} moves")
    return 0


if __name__ == "__main__":
    run_main(main)
