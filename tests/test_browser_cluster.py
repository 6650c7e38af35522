"""The webcam page in a cluster, in real headless Chromium: two `streamguard serve` processes on
one real redis-server. Worker A is full (an RTSP camera, `max_streams` 1). The page, loaded from
A, offers its camera to A, is told where there is room, offers it to B itself (cross-origin,
its token kept), goes live there and answers over B's websocket. Then B drains: the page hears
`stream.ending` (`worker_draining`), says so, and offers the camera again through A, its own
origin, which has room by then; it goes live on A."""

from __future__ import annotations

import json

import httpx
import pytest
from browser_helpers import CHUNKS_COUNTED, connect_webcam, log_states, open_page, save_screenshot, state_of
from playwright.sync_api import expect
from redis_helpers import redis_server
from rtsp_helpers import rtsp_camera
from service_helpers import TOKEN, LiveService, serve_process, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.redis, pytest.mark.rtsp]

ADMIN = {"token": "admin-token", "name": "ops", "role": "admin"}
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


def local_streams(service: LiveService) -> dict[str, int]:
    """The worker's own streams by state (`/v1/stats`; `/v1/streams` lists the cluster's)."""
    return service.http.get("/v1/stats").json()["streams"]


def test_the_page_follows_placement_to_a_worker_with_room_and_offers_again_when_it_drains(tmp_path, browser):
    with redis_server(tmp_path) as redis_process, rtsp_camera() as camera:
        env = {
            "STREAMGUARD_SERVICE__TOKENS": json.dumps([TOKEN, ADMIN]),
            "STREAMGUARD_CLUSTER__REDIS_URL": redis_process.url,
            "STREAMGUARD_CLUSTER__LEASE_TTL_S": "1.5",
            "STREAMGUARD_CLUSTER__DRAIN_TIMEOUT_S": "20",
        }
        full = {**env, "STREAMGUARD_SERVICE__MAX_STREAMS": "1"}
        with (
            serve_process(tmp_path, ["--config", "tiny"], full) as worker_a,
            serve_process(tmp_path, ["--config", "tiny"], env) as worker_b,
        ):
            a, b = worker_a.service, worker_b.service
            created = a.http.post("/v1/streams", json={"source": "rtsp", "url": camera.url})
            assert created.status_code == 201, created.text  # A is full now
            # A's pages may call B once A has seen B advertise itself (every third of a lease)
            wait_until(lambda: b.url in a.http.get("/").headers["content-security-policy"], "A to see B")
            allowed = preflight(b, a.url)
            assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == a.url
            assert "access-control-allow-credentials" not in allowed.headers  # a bearer token, no cookies
            refused = preflight(b, FOREIGN_ORIGIN)
            assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers

            with open_page(browser) as page:
                sockets: list[str] = []
                page.on("websocket", lambda socket: sockets.append(socket.url))
                connect_webcam(page, a.url)
                assert local_streams(b) == {"live": 1} and local_streams(a) == {"live": 1}  # A: the camera
                b_socket = "ws" + b.url.removeprefix("http") + "/v1/streams/"
                assert sockets and all(url.startswith(b_socket) for url in sockets), sockets

                page.get_by_label("Question", exact=True).fill("What is happening?")
                page.keyboard.press("Enter")
                answer = page.locator("#history li.qa").first
                expect(answer).to_have_attribute("data-status", "done")
                expect(page.locator("dd[data-stat=questions_answered]")).to_have_text("1")
                save_screenshot(page, "webcam-placed")

                # B drains; A has room again: the page offers its camera through A and goes live
                log_states(page)
                assert a.http.delete(f"/v1/streams/{created.json()['id']}").status_code == 200
                admin = {"Authorization": f"Bearer {ADMIN['token']}"}
                assert b.http.post("/v1/admin/drain", headers=admin).status_code == 202
                page.wait_for_function(OFFERED_AGAIN)
                expect(state_of(page)).to_have_attribute("data-state", "live")
                page.wait_for_function(CHUNKS_COUNTED)
                assert local_streams(a) == {"live": 1}
                assert sockets[-1].startswith("ws" + a.url.removeprefix("http")), sockets
                expect(answer).to_have_attribute("data-status", "done")  # the answers so far stay
                worker_b.process.wait(30)
