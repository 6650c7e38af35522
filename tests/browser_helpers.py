"""Debian's Chromium, headless under Playwright, with a generated fake webcam and microphone,
for the browser tests; screenshots go to the test artifacts folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from streamguard.ingest.synthetic import write_wav, write_y4m

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS_ENV = "STREAMGUARD_ARTIFACTS"
DEFAULT_ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
WAIT_MS = 60_000  # the limit on every wait for the page: a loaded 2-core machine is slow, never stuck
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
# Chromium loops its fake capture files; a few seconds make a varied but small webcam.
FAKE_MEDIA_SECONDS = 6.0


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


@contextmanager
def launch_chromium(
    playwright: Playwright, media_folder: Path, allow_camera: bool = True
) -> Iterator[Browser]:
    """Chromium whose camera plays a moving synthetic scene and whose microphone a tone."""
    video = write_y4m(media_folder / "webcam.y4m", FAKE_MEDIA_SECONDS, fps=10, motion="moving")
    audio = write_wav(media_folder / "microphone.wav", FAKE_MEDIA_SECONDS)
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM), args=chromium_args(video, audio, allow_camera), timeout=WAIT_MS
    )
    try:
        yield browser
    finally:
        browser.close()


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
