"""Screenshots of an HTML report as a reader sees it, cut into pages of 2000 pixels.

Needs a headless Chromium on the PATH (Debian: ``apt-get install chromium-headless-shell``);
plotly.js is embedded in crosslens reports, so no network is used. Usage:

    python scripts/screenshot_report.py DEMO/report.html --out /tmp/shots

writes /tmp/shots/page-00.png, page-01.png, ... and prints their paths.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

BROWSERS = ("chromium-headless-shell", "chromium", "google-chrome")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--max-height", type=int, default=40000, help="tallest page the browser renders (px)")
    args = parser.parse_args()
    browser = next((b for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        print(
            f"no headless browser found (tried {', '.join(BROWSERS)}); install chromium-headless-shell", file=sys.stderr
        )
        return 2
    if not args.report.is_file():
        print(f"{args.report}: no such file", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    whole = args.out / "whole.png"
    done = subprocess.run(
        [
            browser,
            "--headless",  # a full Chromium opens a window without it; the headless shell takes it too
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={whole}",
            f"--window-size={args.width},{args.max_height}",
            "--virtual-time-budget=30000",
            args.report.resolve().as_uri(),
        ],
        capture_output=True,
    )
    if not whole.is_file():
        print(f"{browser} wrote no screenshot: {done.stderr.decode(errors='replace').strip()[-500:]}", file=sys.stderr)
        return 1
    image = Image.open(whole)
    ink = np.where(np.asarray(image.convert("L")).min(axis=1) < 250)[0]
    height = int(ink.max()) + 20 if len(ink) else image.height
    for page, top in enumerate(range(0, height, 2000)):
        path = args.out / f"page-{page:02d}.png"
        image.crop((0, top, args.width, min(height, top + 2000))).save(path)
        print(path)
    whole.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
