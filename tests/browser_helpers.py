"""Debian's Chromium, headless under Playwright, with a generated fake webcam and microphone,
for the browser tests; screenshots go to the test artifacts folder."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, Playwright, WebSocketRoute, expect, sync_playwright
from service_helpers import TOKEN, wait_until

from streamguard.ingest.synthetic import Motion, write_wav, write_y4m

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS_ENV = "STREAMGUARD_ARTIFACTS"
DEFAULT_ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
WAIT_MS = 60_000  # the limit on every wait for the page: a loaded 2-core machine is slow, never stuck
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
# Chromium loops its fake capture files; a few seconds make a varied but small webcam.
FAKE_MEDIA_SECONDS = 6.0
# Predicates are functions, not expressions: Playwright evaluates an expression with eval, which
# the pages' content security policy forbids.
CHUNKS_COUNTED = "() => Number(document.querySelector('dd[data-stat=chunks_received]')?.textContent) > 0"


def chromium_args(video: Path, audio: Path, allow_camera: bool = True) -> list[str]:
    """Without `allow_camera` nothing answers the permission prompt, so headless Chromium denies
    the camera and microphone (NotAllowedError), as a user who clicks Block."""
    accept_prompts = ["--use-fake-ui-for-media-stream"] if allow_camera else []
    return [
        *accept_prompts,
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={video}",
        f"--use-file-for-fake-audio-capture={audio}",
        "--headless",
        "--no-sandbox",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]


@contextmanager
def playwright_driver() -> Iterator[Playwright]:
    """Playwright's driver, one per module: a second one cannot start while one runs."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package to run the browser tests")
    with sync_playwright() as playwright:
        yield playwright


def fake_media(media_folder: Path, motion: Motion = "moving") -> tuple[Path, Path]:
    """The fake webcam's scene and the fake microphone's tone, written to `media_folder`."""
    video = write_y4m(media_folder / "webcam.y4m", FAKE_MEDIA_SECONDS, fps=10, motion=motion)
    return video, write_wav(media_folder / "microphone.wav", FAKE_MEDIA_SECONDS)


@contextmanager
def launch_chromium(
    playwright: Playwright, media_folder: Path, allow_camera: bool = True, motion: Motion = "moving"
) -> Iterator[Browser]:
    """Chromium whose camera plays a synthetic scene (moving unless told) and whose microphone a
    tone; a static scene makes every chunk after the first redundant."""
    video, audio = fake_media(media_folder, motion)
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM), args=chromium_args(video, audio, allow_camera), timeout=WAIT_MS
    )
    try:
        yield browser
    finally:
        browser.close()


@contextmanager
def chromium_process(
    playwright: Playwright, media_folder: Path
) -> Iterator[tuple[Browser, subprocess.Popen[bytes]]]:
    """Chromium with the fake webcam started as a process of the test's own (in a session of
    its own, so a kill reaches its renderers too), driven over CDP: a test can SIGKILL it."""
    video, audio = fake_media(media_folder)
    log = media_folder / "chromium.log"  # a file, not a pipe: nobody has to keep reading it
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                str(CHROMIUM),
                *chromium_args(video, audio),
                "--remote-debugging-port=0",
                f"--user-data-dir={media_folder / 'profile'}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=out,
            start_new_session=True,
        )
    try:

        def endpoint() -> str | None:  # Chromium prints its CDP endpoint once it listens
            assert process.poll() is None, f"chromium exited ({process.returncode}):\n{log.read_text()}"
            found = re.search(r"DevTools listening on (\S+)", log.read_text(errors="replace"))
            return found[1] if found else None

        browser = playwright.chromium.connect_over_cdp(wait_until(endpoint, "chromium's CDP endpoint"))
        yield browser, process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(WAIT_MS / 1000)


@contextmanager
def open_page(browser: Browser, viewport: dict[str, int] = DESKTOP) -> Iterator[Page]:
    """A fresh context (its own sessionStorage) and page; fails the test on an uncaught script
    error, which the page would otherwise only print to its console."""
    context = browser.new_context(viewport=viewport)
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def artifacts_dir() -> Path:
    """$STREAMGUARD_ARTIFACTS, else test-artifacts/ at the repository root (git ignores it)."""
    folder = Path(os.environ.get(ARTIFACTS_ENV) or DEFAULT_ARTIFACTS)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_screenshot(page: Page, name: str) -> Path:
    path = artifacts_dir() / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


# Every change of the page's state line, as "state: text", in window.stateLog: a state that
# lasts less than one of Playwright's polls is still seen.
STATE_LOG_SCRIPT = """() => {
  const line = document.getElementById("state");
  window.stateLog = [];
  const record = () => {
    const entry = `${line.dataset.state}: ${line.textContent}`;
    if (window.stateLog.at(-1) !== entry) window.stateLog.push(entry);
  };
  record();
  new MutationObserver(record).observe(line, { attributes: true, childList: true, characterData: true, subtree: true });
}"""


def log_states(page: Page) -> None:
    """Start recording the state line's changes (see STATE_LOG_SCRIPT); call after each load."""
    page.evaluate(STATE_LOG_SCRIPT)


class SocketProxy:
    """The page's stream websockets, routed through the test: it can hold the service's answers
    back (they stay "streaming"), drop the connection as a network blip would, and refuse the
    page's reconnections while the service itself stays up."""

    def __init__(self, page: Page):
        self.hold_answers = False
        self.refuse = False
        self._open: list[WebSocketRoute] = []
        page.route_web_socket(re.compile(r"/v1/streams/[^/]+/ws"), self._route)

    def drop(self) -> None:
        """Close the page's side of every open stream socket, as a lost connection (1011)."""
        for route in self._open:
            route.close(code=1011, reason="dropped by the test")
        self._open.clear()

    def _route(self, route: WebSocketRoute) -> None:
        if self.refuse:
            route.close(code=1011, reason="refused by the test")
            return
        server = route.connect_to_server()
        server.on_message(lambda message: self._forward(route, message))
        self._open.append(route)

    def _forward(self, route: WebSocketRoute, message: str | bytes) -> None:
        if self.hold_answers and json.loads(message)["type"].startswith("answer."):
            return
        route.send(message)


def state_of(page: Page) -> Locator:
    """The page's state line (its `data-state` and text)."""
    return page.locator("#state")


def sign_in(page: Page, token: str = TOKEN) -> None:
    page.get_by_label("Access token").fill(token)
    page.get_by_role("button", name="Use token").click()


def ask(page: Page, question: str) -> Locator:
    """Ask on the page (the question box, Enter); the new answer's entry, newest first in the history."""
    page.get_by_label("Question", exact=True).fill(question)
    page.keyboard.press("Enter")
    return page.locator("#history li.qa").first


def connect_webcam(page: Page, url: str) -> None:
    """Open the webcam page, sign in, connect, and wait until the service counts chunks."""
    page.goto(url + "/")
    sign_in(page)
    expect(state_of(page)).to_have_attribute("data-state", "ready")
    page.get_by_role("button", name="Connect", exact=True).click()
    expect(state_of(page)).to_have_attribute("data-state", "live")
    page.wait_for_function(CHUNKS_COUNTED)
