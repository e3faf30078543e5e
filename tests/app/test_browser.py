"""The app in a real browser: server up, charts drawn, checkpoint and loops changed, no console
errors, a screenshot saved to tests/app/artifacts/ (ignored by git).

Needs Debian's chromium (`make browser-deps`, run by `make test`). Without it the test skips,
except under CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from browser import CHARTS, CHROMIUM, CHROMIUM_ARGS, app_server, first_chart_data, wait_idle

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
SHIPPED = Path(__file__).resolve().parents[2] / "data" / "checkpoints"


def _need_browser():
    if not Path(CHROMIUM).is_file():
        msg = f"{CHROMIUM} missing: run `make browser-deps` (apt-get install chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - playwright is pinned in requirements.txt
        pytest.fail(f"playwright is not installed ({exc})")
    return sync_playwright


def _loops_shown(page) -> list[str]:
    """Row labels of the first heatmap: one per loop, then the final-output reference row."""
    rows = first_chart_data(page)[0]["y"]
    assert rows[-1] == "output", rows
    return rows[:-1]


def test_app_in_a_real_browser(checkpoint_root: Path):
    sync_playwright = _need_browser()
    # The shipped checkpoints when they exist (what `make run` opens), else the test ones.
    env = {} if (SHIPPED / "pointer-lora-on").is_dir() else {"MYTHOS_LENS_CHECKPOINTS": str(checkpoint_root)}  # fmt: skip
    ARTIFACTS.mkdir(exist_ok=True)
    with app_server(env) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            problems: list[str] = []
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(url)
            wait_idle(page, charts=3)
            assert (
                page.get_by_role("combobox", name="Checkpoint").input_value() == "pointer-lora-on"
            )
            loops = page.get_by_role("spinbutton", name="Loops (trained with")
            default = int(loops.input_value())
            assert _loops_shown(page) == [f"loop {t}" for t in range(default)]

            # more loops (beyond training for the test checkpoints): the heatmap grows
            more = default + 3
            loops.fill(str(more))
            loops.press("Enter")
            page.wait_for_function(
                "([s, n]) => document.querySelector(s).data[0].y.length === n",
                arg=[CHARTS, more + 1],
            )
            wait_idle(page, charts=3)
            assert _loops_shown(page)[-1] == f"loop {more - 1}"

            # another checkpoint: the caption names it and the charts are drawn again
            page.get_by_role("combobox", name="Checkpoint").click()
            page.get_by_role("option", name="pointer-lora-off", exact=True).click()
            page.get_by_text("pointer-lora-off ·").wait_for()
            wait_idle(page, charts=3)
            assert page.locator(CHARTS).count() >= 3

            # another page via the sidebar
            page.get_by_role("link", name="Depth-wise LoRA").click()
            page.get_by_text("Ablate LoRA").wait_for()
            wait_idle(page, charts=4)
            page.screenshot(path=str(ARTIFACTS / "lora_page.png"))
            page.get_by_role("link", name="Trajectories").click()
            page.get_by_text("Rank of one token").wait_for()
            wait_idle(page, charts=3)
            page.screenshot(path=str(ARTIFACTS / "trajectories.png"))
            assert not page.get_by_text("Traceback").count()
            assert problems == []
        finally:
            browser.close()
