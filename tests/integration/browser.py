"""A headless Chromium driven by Selenium, for tests that use the UIs as a person does.

The browser and its driver are Debian's packages (``chromium``, ``chromium-driver``; ``.ci/run``
installs them), never a download: the machines that run the tests reach no browser mirror, and
Selenium Manager stays unused because both paths are given. The flags keep Chromium from calling
hosts it cannot reach (component updates, sync, QUIC probes), which otherwise slows every page.

The UIs here are React apps whose CSS classes change between versions, so the helpers find things
by what a person reads (a button's text, a field's ``name``) and wait explicitly for each state,
failing with the page's text and a screenshot instead of a bare timeout.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Debian's chromium and chromium-driver; FLYWHEEL_CHROMIUM / FLYWHEEL_CHROMEDRIVER override them
DEFAULT_CHROMIUM = "/usr/bin/chromium"
DEFAULT_CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1440,1000",
)


#: how long a click waits for an element covered or not yet shown (an opening section)
CLICK_PATIENCE_S = 20.0


class BrowserError(AssertionError):
    """A page did not reach the state a step waited for; the message says where to look."""


def chromium_paths() -> tuple[Path, Path] | None:
    """(browser, driver) if both executables exist, else None."""
    browser = Path(os.environ.get("FLYWHEEL_CHROMIUM", DEFAULT_CHROMIUM))
    driver = Path(os.environ.get("FLYWHEEL_CHROMEDRIVER", DEFAULT_CHROMEDRIVER))
    if browser.is_file() and driver.is_file():
        return browser, driver
    return None


def _xpath_literal(text: str) -> str:
    """``text`` as an XPath 1.0 string literal (which has no escapes)."""
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    return "concat(" + ", \"'\", ".join(f"'{part}'" for part in text.split("'")) + ")"


class Browser:
    """One headless Chromium session with a fresh profile; every :meth:`shot` is kept.

    Screenshots (PNG), the page's HTML and its visible text go to ``artifacts``, numbered in the
    order they were taken, so a failed run can be read step by step afterwards.
    """

    def __init__(self, artifacts: Path, page_load_timeout: float = 120):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        paths = chromium_paths()
        if paths is None:
            raise BrowserError("Chromium not found: install the Debian packages 'chromium' and "
                               "'chromium-driver' (.ci/run does)")
        browser, driver = paths
        self.artifacts = artifacts
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self.profile = Path(tempfile.mkdtemp(prefix="flywheel-chromium-"))
        options = webdriver.ChromeOptions()
        options.binary_location = str(browser)
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={self.profile}"):
            options.add_argument(flag)
        service = Service(str(driver), log_output=str(self.artifacts / "chromedriver.log"))
        self.driver = webdriver.Chrome(options=options, service=service)
        self.driver.set_page_load_timeout(page_load_timeout)
        self.shots: list[Path] = []

    # -- bookkeeping ------------------------------------------------------------------------------

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)

    def text(self) -> str:
        """The visible text of the whole page ('' while it is between documents)."""
        from selenium.webdriver.common.by import By

        try:
            return self.driver.find_element(By.TAG_NAME, "body").text
        except Exception:
            return ""

    def shot(self, name: str) -> Path:
        """Save a screenshot, the HTML and the visible text as ``NN-name.*``; returns the PNG."""
        stem = f"{len(self.shots) + 1:02d}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}"
        png = self.artifacts / f"{stem}.png"
        with contextlib.suppress(Exception):
            self.driver.save_screenshot(str(png))
            (self.artifacts / f"{stem}.html").write_text(self.driver.page_source)
            (self.artifacts / f"{stem}.txt").write_text(self.text())
        self.shots.append(png)
        return png

    def fail(self, message: str) -> BrowserError:
        """An error naming the page, its text (cut) and the screenshot just taken of it."""
        png = self.shot("FAILED")
        page = self.text()
        return BrowserError(f"{message}\n  url: {self.driver.current_url}\n  screenshot: {png}\n"
                            f"  page text (first 3000 chars):\n{page[:3000]}")

    # -- finding and waiting ----------------------------------------------------------------------

    def wait(self, condition: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.5) -> Any:
        """Poll ``condition`` until truthy; on timeout raise :meth:`fail` saying ``what``."""
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                if result := condition():
                    return result
            except Exception as exc:  # stale or not yet rendered: poll again
                last = exc
            time.sleep(interval)
        detail = ""
        if last is not None:
            first_line = (str(last).splitlines() or [""])[0]
            detail = f" (last error: {type(last).__name__}: {first_line})"
        raise self.fail(f"timed out after {timeout:.0f}s waiting for {what}{detail}")

    def visible(self, xpath: str, within: Any = None) -> list:
        from selenium.webdriver.common.by import By

        root = within or self.driver
        return [e for e in root.find_elements(By.XPATH, xpath) if e.is_displayed()]

    def button(self, label: str, timeout: float = 30, within: Any = None):
        """A displayed, enabled button whose text (or aria-label) is exactly ``label``."""
        literal = _xpath_literal(label)
        xpath = (f".//button[normalize-space(.)={literal} or @aria-label={literal}]"
                 f" | .//*[@role='button'][normalize-space(.)={literal}]")
        return self.wait(lambda: next((b for b in self.visible(xpath, within) if b.is_enabled()),
                                      None), timeout, f"a button {label!r}")

    def click(self, element) -> None:
        """Scroll ``element`` to the middle of the view, then click it as a user would."""
        from selenium.common.exceptions import (
            ElementClickInterceptedException,
            ElementNotInteractableException,
            WebDriverException,
        )

        deadline = time.monotonic() + CLICK_PATIENCE_S
        while True:
            try:
                self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})",
                                           element)
                element.click()
                return
            except (ElementClickInterceptedException, ElementNotInteractableException) as exc:
                # a toast or a sticky header over it (a long form scrolls inside its dialog), or
                # a section still opening around it (slow on a busy machine): give it a moment,
                # then scroll again; a person would do the same
                if time.monotonic() > deadline:
                    raise self.fail(f"could not click {self.describe(element)}: "
                                    f"{exc.msg}") from exc
                time.sleep(1.0)
                self.driver.execute_script(
                    "arguments[0].scrollIntoView({block: 'center'}); window.scrollBy(0, -80)",
                    element)
            except WebDriverException as exc:
                raise self.fail(f"could not click {self.describe(element)}: {exc.msg}") from exc

    def describe(self, element) -> str:
        """A short name of an element for error messages (tag, name, text)."""
        try:
            name = element.get_attribute("name") or element.get_attribute("aria-label") or ""
            return f"<{element.tag_name} {name!r}> {element.text[:60]!r}"
        except Exception:
            return "an element no longer on the page"

    def expand(self, label: str, within: Any = None) -> None:
        """Open the accordion section titled ``label`` (a no-op when it is open already)."""
        trigger = self.button(label, within=within)
        if trigger.get_attribute("aria-expanded") != "true":
            self.click(trigger)
        self.wait(lambda: trigger.get_attribute("aria-expanded") == "true", 30,
                  f"section {label!r} to open")

    def wait_for_text(self, text: str, timeout: float, within: Any = None):
        """The first displayed element whose own text contains ``text``."""
        xpath = f".//*[contains(normalize-space(text()), {_xpath_literal(text)})]"
        return self.wait(lambda: next(iter(self.visible(xpath, within)), None), timeout,
                         f"text {text!r} on the page")

    def open(self, url: str, ready_text: str, timeout: float = 120) -> None:
        """Load ``url`` and wait until ``ready_text`` is displayed (the app has rendered)."""
        self.driver.get(url)
        self.wait_for_text(ready_text, timeout)

    # -- typing -----------------------------------------------------------------------------------

    def fill(self, element, value: str) -> None:
        """Replace an input's value by typing, as a user does (select all, then type)."""
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.common.keys import Keys

        self.click(element)
        try:
            element.send_keys(Keys.CONTROL, "a")
            element.send_keys(Keys.DELETE)
            element.send_keys(value)
        except WebDriverException as exc:
            raise self.fail(f"could not type into {self.describe(element)}: {exc.msg}") from exc

    def paste(self, element, text: str) -> None:
        """Paste ``text`` into a focused rich editor (select all first), as Ctrl+V would.

        Code editors such as Monaco auto-close brackets and auto-indent typed newlines, so typing
        JSON key by key garbles it; a paste event inserts it verbatim. The clipboard itself is not
        used (a headless browser has none it shares).
        """
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        self.click(element)
        ActionChains(self.driver).key_down(Keys.CONTROL).send_keys("a").key_up(
            Keys.CONTROL).perform()
        self.driver.execute_script(
            "const data = new DataTransfer(); data.setData('text/plain', arguments[1]);"
            "document.activeElement.dispatchEvent(new ClipboardEvent('paste', "
            "{clipboardData: data, bubbles: true, cancelable: true}));", element, text)
