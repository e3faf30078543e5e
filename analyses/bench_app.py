"""Time the Streamlit app in a real browser (Debian chromium + playwright).

    .venv/bin/python analyses/bench_app.py [--runs 3] [--interactions 6]

- **cold start**: from launching ``streamlit run app/main.py`` to the first plotly chart drawn in
  a fresh browser (new server each run: imports, checkpoint load, first trace all included).
- **interaction**: from a widget change to the charts drawn with the new data and no rerun
  running. Three kinds, alternated: the loop count (a new trace the first time), the lens (new
  lens tables) and the example shown (cached tables, new figures).

Prints each measurement and the medians. Targets: cold start < 5 s, interaction < 0.5 s.
Uses the shipped checkpoints (``data/checkpoints``) unless ``MYTHOS_LENS_CHECKPOINTS`` is set.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "app"))

from browser import (  # noqa: E402
    CHARTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    app_server,
    wait_idle,
)

TITLE = "(sel) => document.querySelector(sel).layout.title.text"


def cold_start(pw) -> float:
    """Seconds from server launch to the first chart in a fresh browser page."""
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
        t0 = time.perf_counter()
        with app_server() as url:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.wait_for_selector(CHARTS, timeout=60_000)
            return time.perf_counter() - t0
    finally:
        browser.close()


def interactions(pw, n: int) -> list[tuple[str, float]]:
    """(kind, seconds) for ``n`` widget changes on a warm server."""
    out: list[tuple[str, float]] = []
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    try:
        with app_server() as url:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            wait_idle(page, charts=3)
            loops = page.get_by_role("spinbutton", name="Loops").first
            trained = int(loops.input_value())
            example = page.get_by_role("spinbutton", name="Example shown")
            for i in range(n):
                kind = ("loops", "lens", "example")[i % 3]
                t0 = time.perf_counter()
                if kind == "loops":
                    target = trained + 1 + (i // 3) % 2
                    loops.fill(str(target))
                    loops.press("Enter")
                    page.wait_for_function(
                        "([s, n]) => document.querySelector(s).data[0].y.length === n",
                        arg=[CHARTS, target],
                    )
                elif kind == "lens":
                    lens = ("coda", "logit")[(i // 3) % 2]
                    page.get_by_role("radiogroup", name="Lens").get_by_text(
                        lens, exact=True
                    ).click()
                    page.wait_for_function(
                        f"(s) => ({TITLE})(s).includes('{lens} lens:')", arg=CHARTS
                    )
                else:
                    before = page.evaluate(
                        "(s) => document.querySelector(s).data[0].x.join()", CHARTS
                    )
                    example.fill(str(1 + i % 5))
                    example.press("Enter")
                    page.wait_for_function(
                        "([s, b]) => document.querySelector(s).data[0].x.join() !== b",
                        arg=[CHARTS, before],
                    )
                wait_idle(page, charts=3)
                out.append((kind, time.perf_counter() - t0))
    finally:
        browser.close()
    return out


def main() -> None:
    """Run the measurements and print them."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="cold starts")
    ap.add_argument("--interactions", type=int, default=9, help="widget changes")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        colds = []
        for i in range(args.runs):
            colds.append(cold_start(pw))
            print(f"cold start {i + 1}: {colds[-1]:.2f} s", flush=True)
        acts = interactions(pw, args.interactions)
    for kind, s in acts:
        print(f"interaction ({kind}): {s:.3f} s")
    print(f"median cold start to first chart: {statistics.median(colds):.2f} s (target < 5 s)")
    print(
        f"median interaction: {statistics.median(s for _, s in acts):.3f} s (target < 0.5 s); "
        + ", ".join(
            f"{k} {statistics.median(s for kk, s in acts if kk == k):.3f} s"
            for k in ("loops", "lens", "example")
        )
    )


if __name__ == "__main__":
    main()
