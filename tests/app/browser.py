"""A real browser on the real server: Debian chromium driven by pip playwright.

Used by ``tests/app/test_browser.py`` and ``analyses/bench_app.py``. The server is started with
the flags DESIGN.md §5 measured (headless, 127.0.0.1, no usage stats, no file watcher), is ready
when ``/_stcore/health`` answers ``ok``, and is stopped by its pid.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
CHARTS = "[data-testid=stPlotlyChart] .js-plotly-plot"
RUNNING = "[data-testid=stStatusWidget]"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def app_server(env: dict[str, str] | None = None, timeout: float = 60.0) -> Iterator[str]:
    """Run ``streamlit run app/main.py`` on a free port; yield its URL once healthy."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(REPO / "app" / "main.py"),
        f"--server.port={port}", "--server.headless=true", "--server.address=127.0.0.1",
        "--browser.gatherUsageStats=false", "--server.fileWatcherType=none",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"streamlit exited with {proc.returncode}: {err[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().decode().strip() == "ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"no healthy server at {url} after {timeout} s")
            time.sleep(0.1)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group, by its pid
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_idle(page, charts: int, timeout_ms: float = 60_000) -> None:
    """Wait until no rerun is running and at least ``charts`` plotly charts are drawn."""
    page.wait_for_function(
        """([sel, running, n]) => document.querySelectorAll(running).length === 0
             && document.querySelectorAll(sel).length >= n""",
        arg=[CHARTS, RUNNING, charts],
        timeout=timeout_ms,
        polling=25,
    )


def first_chart_data(page) -> list[dict]:
    """Trace data of the first plotly chart on the page (x, y and name of each trace)."""
    return page.evaluate(
        """(sel) => document.querySelector(sel).data.map(
               t => ({x: Array.from(t.x || []), y: Array.from(t.y || []), name: t.name}))""",
        CHARTS,
    )
