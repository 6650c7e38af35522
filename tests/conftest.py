"""Fixtures shared across test modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_helpers import Trio, running_trio
from cpu_helpers import one_torch_thread
from parity_helpers import load_tiny_backbone

from streamguard.backbones.tiny import build_tiny_checkpoint
from streamguard.backbones.tiny_qwen3 import build_tiny_qwen3_checkpoint
from streamguard.ingest.synthetic import write_clip


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny real Qwen2.5-Omni thinker (`build_tiny_checkpoint`), built once per session."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def qwen3_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny real Qwen3-Omni thinker (`build_tiny_qwen3_checkpoint`), built once per session."""
    return build_tiny_qwen3_checkpoint(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Torch on one thread for a module that asks for it (`pytestmark =
    pytest.mark.usefixtures("one_thread")`), see `one_torch_thread`."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def backbone(checkpoint: Path) -> Any:
    """The tiny Qwen2.5-Omni backbone, loaded once per module (a module needing another build
    defines its own `backbone`)."""
    return load_tiny_backbone(checkpoint)


@pytest.fixture(autouse=True)
def no_stream_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """Streams a test left open on its module's live `service` are deleted after it, passed or
    failed, so the next test starts from an empty service."""
    from service_helpers import LiveService

    service = request.getfixturevalue("service") if "service" in request.fixturenames else None
    yield
    if isinstance(service, LiveService):
        service.delete_every_stream()


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`clip("x.mp4", seconds, **write_clip options)`: a generated clip, written once per session
    for each distinct set of arguments. Treat it as read-only; copy it to change it."""
    folder = tmp_path_factory.mktemp("clips")
    written: dict[tuple[Any, ...], Path] = {}

    def make(name: str, seconds: float, **options: Any) -> Path:
        key = (name, seconds, *sorted(options.items()))
        if key not in written:
            written[key] = write_clip(folder / f"{len(written)}-{name}", seconds, **options)
        return written[key]

    return make


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    """Playwright's driver for a browser test module (`browser_helpers.playwright_driver`)."""
    from browser_helpers import playwright_driver

    with playwright_driver() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Chromium with the fake webcam and microphone, one per browser test module."""
    from browser_helpers import launch_chromium

    with launch_chromium(playwright, tmp_path_factory.mktemp("fake-media")) as launched:
        yield launched


@pytest.fixture(scope="session")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trio]:
    """Three `streamguard serve` workers on one Redis (`cluster_helpers`), started once for the
    session by the first test that asks for `cluster`."""
    with running_trio(tmp_path_factory.mktemp("trio")) as started:
        yield started


@pytest.fixture
def cluster(trio: Trio) -> Trio:
    """The trio, all three workers running (a stopped one started again) and holding no stream."""
    trio.ready()
    return trio
