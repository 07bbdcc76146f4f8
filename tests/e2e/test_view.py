"""The live page in headless Chromium against a daemon guarding the simulated exchange
(``run_daemon`` over loopback, SQLite audit log): a price move reaches the page within 2 s,
the distance bar crosses into the trigger band, and the guard's refusal and then its
action appear with their reasons, pushed (no reload). Screenshots are kept as artifacts:
in ``$GUARDBOT_ARTIFACTS`` when set, else in the test's tmp folder (the path is printed).

Chromium and its driver come from Debian (``apt-get install chromium chromium-driver``,
done by .ci/run); the test drives them with Selenium. Without them it is skipped, except
in CI (``CI`` set), where it fails: it must never be skipped silently there.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.helpers import ETH, guard_settings, guarding, pin_mark
from guardbot.sim.admin import open_account
from guardbot.sim.server import SimServer

TOKEN = "e2e-view-token-0123456789"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("GUARDBOT_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser() -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        selenium_found = False
    else:
        selenium_found = True
    if CHROMIUM is None or CHROMEDRIVER is None or not selenium_found:
        missing = "chromium, chromium-driver (apt) and selenium (the dev extra)"
        if os.environ.get("CI"):
            pytest.fail(f"the browser test needs {missing}: .ci/run installs them")
        pytest.skip(f"needs {missing}")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,1700",
                     "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


async def in_browser(action: Callable[[], Any]) -> Any:
    """Run a (blocking) WebDriver call off the event loop: the daemon serves meanwhile."""
    return await asyncio.to_thread(action)


async def until(driver: Any, check: Callable[[Any], Any], timeout_s: float = 10.0) -> Any:
    """Wait for ``check`` to return something true. The page redraws its rows on every push,
    so an element found a moment ago may be gone: such a check is simply tried again."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.wait import WebDriverWait

    wait = WebDriverWait(driver, timeout_s, poll_frequency=0.05,
                         ignored_exceptions=(StaleElementReferenceException,))
    return await in_browser(lambda: wait.until(check))


@pytest.mark.slow
async def test_the_page_follows_a_price_move_into_the_trigger_band_and_the_guards_answer(
    browser: Any, tmp_path: Path, sqlite_url: str,
) -> None:
    from selenium.webdriver.common.by import By

    folder = artifacts(tmp_path)
    stop = tmp_path / "STOP"
    port = free_port()
    async with SimServer(seed=7, scenario="calm", speed=0) as sim:
        account = await open_account(sim.rest_url, "20000", [(ETH, "ISOLATED", "1", 10)])
        settings = guard_settings(
            sim, account, sqlite_url, tmp_path / "spool",
            health={"enabled": True, "host": "127.0.0.1", "port": port, "token": TOKEN,
                    "push_s": 0.25, "chart_sample_s": 1},
            guard={"kill_switch_file": str(stop)})  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        async with guarding(settings), httpx.AsyncClient(
                base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}) as api:
            state: dict[str, Any] = {}

            async def read() -> None:
                try:
                    state.update((await api.get("/view/state")).json())
                except httpx.HTTPError:
                    state.clear()

            async def position_shown() -> bool:
                await read()
                return bool(state.get("positions"))

            deadline = time.monotonic() + 15
            while not await position_shown():
                assert time.monotonic() < deadline, "the daemon never showed the position"
                await asyncio.sleep(0.1)
            (position,) = state["positions"]
            trigger = Decimal(position["bands"]["trigger"])
            assert Decimal(position["distance"]) > trigger and position["zone"] != "trigger"

            # A browser logs in once with the token, then the page is pushed to.
            await in_browser(lambda: browser.get(f"{base}/view"))
            await until(browser, lambda d: d.find_element(By.NAME, "token"))
            await in_browser(lambda: browser.find_element(By.NAME, "token").send_keys(TOKEN))
            await in_browser(lambda: browser.find_element(By.TAG_NAME, "form").submit())
            row_css = f'tr[id="pos-{position["id"]}"]'
            await until(browser, lambda d: d.find_element(By.CSS_SELECTOR, row_css))

            def shown(css: str) -> str:
                text: str = browser.find_element(By.CSS_SELECTOR, f"{row_css} {css}").text
                return text

            await until(browser, lambda d: shown(".mark") == position["mark"])

            # The kill switch holds the guard back: the fall stays in the trigger band.
            stop.touch()
            liquidation = Decimal(position["liquidation_price"])
            price = str((liquidation * Decimal("1.02")).quantize(Decimal("0.01")))
            await pin_mark(sim, ETH, price)
            moved = time.monotonic()
            await until(browser, lambda d: Decimal(shown(".mark")) == Decimal(price))
            took = time.monotonic() - moved
            print(f"\nthe move to {price} showed in the page {took * 1000:.0f} ms later")
            assert took < 2.0
            await until(browser, lambda d: d.find_element(
                By.CSS_SELECTOR, f"{row_css} .bar").get_attribute("data-zone") == "trigger")
            await until(browser, lambda d: d.find_element(
                By.CSS_SELECTOR, row_css).get_attribute("data-zone") == "trigger")
            refused_text = await until(browser, lambda d: d.find_element(
                By.CSS_SELECTOR, "tr.refused .reason").text)
            assert "kill switch" in refused_text, refused_text
            first = folder / "view-trigger-band.png"
            await in_browser(lambda: browser.save_screenshot(str(first)))

            # Released, the guard tops the position up: the action appears with its reason.
            stop.unlink()

            def topped_up(driver: Any) -> str | None:
                for row in driver.find_elements(By.CSS_SELECTOR, "tr.action:not(.refused)"):
                    cells = row.find_elements(By.TAG_NAME, "td")
                    if cells[3].text.startswith("ADD"):
                        return str(row.find_element(By.CSS_SELECTOR, ".reason").text)
                return None

            reason = await until(browser, topped_up, timeout_s=15)
            assert "below trigger" in reason, reason
            await until(browser, lambda d: d.find_element(
                By.CSS_SELECTOR, f"{row_css} .bar").get_attribute("data-zone") != "trigger")
            await until(browser, lambda d: 'class="action"' in d.find_element(
                By.CSS_SELECTOR, f'figure[id="chart-{position["id"]}"]').get_attribute(
                "innerHTML"))
            # the action's link opens its full audit record
            href = await until(browser, lambda d: d.find_element(
                By.CSS_SELECTOR, "tr.action:not(.refused) a").get_attribute("href"))
            assert href.startswith(f"{base}/view/actions/")
            second = folder / "view-after-top-up.png"
            await in_browser(lambda: browser.save_screenshot(str(second)))
            await in_browser(lambda: browser.get(href))
            record = await in_browser(lambda: browser.find_element(By.TAG_NAME, "body").text)
            assert "below trigger" in record and "SUCCEEDED" in record, record
            for shot in (first, second):
                assert shot.stat().st_size > 10_000
                print(f"screenshot: {shot}")
