"""The webcam page in a cluster, in real headless Chromium: three `streamguard serve` processes
on one real redis-server (`cluster_helpers`). Worker A is full (an RTSP camera, `max_streams` 1).
The page, loaded from A, offers its camera to A, is told where there is room, offers it to that
worker (B or C) itself, cross-origin with its token, goes live there and answers over that
worker's websocket. Then that worker drains: the page hears `stream.ending` (`worker_draining`),
says so, and offers the camera again through A, its own origin, which sends it to the third
worker; it goes live there."""

from __future__ import annotations

import httpx
import pytest
from browser_helpers import (
    CHUNKS_COUNTED,
    ask,
    connect_webcam,
    log_states,
    open_page,
    save_screenshot,
    state_of,
)
from cluster_helpers import ADMIN_HEADERS, Trio
from playwright.sync_api import expect
from rtsp_helpers import rtsp_camera
from service_helpers import LiveService

pytestmark = [pytest.mark.browser, pytest.mark.redis, pytest.mark.rtsp]

FOREIGN_ORIGIN = "https://elsewhere.example"
# The state line said the worker is shutting down and counted down to offering again, then the
# page went live (window.stateLog, see browser_helpers.log_states).
OFFERED_AGAIN = """() => {
  const told = window.stateLog.findIndex((entry) =>
    /^reconnecting: The worker holding the stream is shutting down.*Retrying in/.test(entry));
  return told >= 0 && window.stateLog.slice(told).some((entry) => entry.startsWith("live:"));
}"""


def preflight(service: LiveService, origin: str) -> httpx.Response:
    """The CORS preflight a browser sends before a page on `origin` posts an offer."""
    return service.http.options(
        "/v1/streams/webrtc",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,streamguard-redirect",
        },
    )


def socket_prefix(service: LiveService) -> str:
    return "ws" + service.url.removeprefix("http") + "/v1/streams/"


def test_the_page_follows_placement_to_a_worker_with_room_and_offers_again_when_it_drains(
    cluster: Trio, browser
):
    a, b, c = cluster.services()
    with rtsp_camera() as camera:
        created = a.http.post("/v1/streams", json={"source": "rtsp", "url": camera.url})
        assert created.status_code == 201, created.text  # A is full now
        for other in (b, c):  # the other workers answer CORS for A's pages, not for another site's
            allowed = preflight(other, a.url)
            assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == a.url
            assert "access-control-allow-credentials" not in allowed.headers  # a bearer token, no cookies
            refused = preflight(other, FOREIGN_ORIGIN)
            assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers

        with open_page(browser) as page:
            sockets: list[str] = []
            page.on("websocket", lambda socket: sockets.append(socket.url))
            connect_webcam(page, a.url)
            (placed,) = cluster.holding(b, c)
            (third,) = {b, c} - {placed}
            assert sockets and all(url.startswith(socket_prefix(placed)) for url in sockets), sockets

            answer = ask(page, "What is happening?")
            expect(answer).to_have_attribute("data-status", "done")
            expect(page.locator("dd[data-stat=questions_answered]")).to_have_text("1")
            save_screenshot(page, "webcam-placed")

            # the worker holding the page's stream drains: the page offers its camera again
            # through A, still full, and goes live on the third worker
            log_states(page)
            assert placed.http.post("/v1/admin/drain", headers=ADMIN_HEADERS).status_code == 202
            page.wait_for_function(OFFERED_AGAIN)
            expect(state_of(page)).to_have_attribute("data-state", "live")
            page.wait_for_function(CHUNKS_COUNTED)
            assert cluster.holding(third) == [third]
            assert sockets[-1].startswith(socket_prefix(third)), sockets
            expect(answer).to_have_attribute("data-status", "done")  # the answers so far stay
            save_screenshot(page, "webcam-offered-again")
        cluster.worker_of(placed).process.wait(30)  # drained, it exits
