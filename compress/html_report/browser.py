"""Opening a report in a real headless browser (Debian's `chromium` + `chromium-driver`, driven by Selenium):
for the browser test and for the screenshot in docs/. Neither is a dependency of compress; `missing()` says
what is absent. The driver is always the local chromedriver: Selenium Manager is never asked to download one.

    python -m compress.html_report.browser report.html docs/report-screenshot.png
"""
from __future__ import annotations

import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

__all__ = ["missing", "headless_chromium", "screenshot"]

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)


def _which(names) -> str | None:
    return next((found for found in map(shutil.which, names) if found), None)


def missing() -> str | None:
    """Why a headless browser cannot be driven here (None: it can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    if _which(BROWSERS) is None:
        return "no chromium on PATH (Debian: apt-get install chromium chromium-driver)"
    if _which(DRIVERS) is None:
        return "no chromedriver on PATH (Debian: apt-get install chromium-driver)"
    return None


@contextmanager
def headless_chromium(width: int = 1280, height: int = 1000):
    """A Selenium WebDriver on headless Chromium (closed on exit)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = _which(BROWSERS)
    # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}", "--hide-scrollbars"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=_which(DRIVERS)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(html: str | Path, png: str | Path, width: int = 1280) -> Path:
    """A PNG of the whole page at `width` CSS pixels."""
    with headless_chromium(width) as driver:
        driver.get(Path(html).resolve().as_uri())
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, height + 120)  # the window's frame takes some of its height
        driver.save_screenshot(str(png))
    return Path(png)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m compress.html_report.browser REPORT.html OUT.png")
    reason = missing()
    if reason:
        sys.exit(f"error: {reason}")
    print(screenshot(sys.argv[1], sys.argv[2]))
