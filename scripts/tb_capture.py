"""Screenshots of TensorBoard as a user's browser draws it: serve a logdir on 127.0.0.1, open it in headless
Chromium through Playwright, wait until the charts have drawn, and save PNGs. (`chromium --headless
--screenshot` draws at most one line chart: it does not wait for TensorBoard's scripts, so it misleads.)

    python scripts/tb_capture.py <logdir> --out shots/ [--chromium /usr/bin/chromium] [--filter Compare] [--runs 'val$']

Needs Debian's `chromium` (apt-get install chromium) and `pip install playwright`. Writes time_series.png
(the Time Series tab with smoothing 0, filtered by tag and run if asked), custom_scalars.png and hparams.png; prints
what rendered.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CHART = "canvas, svg.line-chart, line-chart, .line-chart"  # TensorBoard draws scalar charts on canvas or svg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def tensorboard(logdir: Path, timeout: float = 90.0) -> Iterator[str]:
    """A TensorBoard server on 127.0.0.1 only, yielding its URL once it answers; stopped on exit."""
    port = free_port()
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
               "--port", str(port), "--reload_interval", "0"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"tensorboard exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{url}/data/runs", timeout=2).read()
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"tensorboard did not answer on {url} within {timeout:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def capture(logdir: Path, out: Path, chromium: str = "/usr/bin/chromium", tag_filter: str = "",
            width: int = 1400, height: int = 1000, run_filter: str = "") -> dict[str, int]:  # fmt: skip
    """Screenshots of the Time Series and Custom Scalars tabs; returns how many charts and images each showed."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    found: dict[str, int] = {}
    with tensorboard(logdir) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": width, "height": height})
        filters = {"smoothing": "0", "tagFilter": tag_filter, "runFilter": run_filter}
        query = "?" + urllib.parse.urlencode({k: v for k, v in filters.items() if v})
        page.goto(f"{url}/{query}#timeseries")
        page.wait_for_selector("tb-line-chart, card-view, .card", timeout=60_000)
        page.wait_for_timeout(4000)  # the charts' data arrives after the cards
        found["time_series_cards"] = page.locator("card-view").count()
        found["time_series_images"] = page.locator("card-view img").count()
        page.screenshot(path=str(out / "time_series.png"), full_page=False)
        page.goto(f"{url}/#custom_scalars")
        page.wait_for_timeout(6000)
        found["custom_scalar_charts"] = page.locator("tf-custom-scalar-margin-chart-card").count()
        page.screenshot(path=str(out / "custom_scalars.png"), full_page=False)
        page.goto(f"{url}/#hparams")
        page.wait_for_timeout(6000)
        page.screenshot(path=str(out / "hparams.png"), full_page=False)
        browser.close()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logdir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("shots"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--filter", default="", help="TensorBoard's tag filter for the Time Series tab")
    parser.add_argument("--runs", default="", help="TensorBoard's run filter (a regex) for the Time Series tab")
    args = parser.parse_args()
    print(capture(args.logdir, args.out, args.chromium, args.filter, run_filter=args.runs))


if __name__ == "__main__":
    main()
