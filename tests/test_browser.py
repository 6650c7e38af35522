"""The browser pages in Debian's real Chromium (headless, through Playwright) against the real
service on the tiny model: the webcam page over WebRTC with a fake camera and microphone, the
operator dashboard with a real GStreamer RTSP camera, and the error states a user can meet.
Every wait is bounded (WAIT_MS); screenshots land in the test artifacts folder."""

from __future__ import annotations

import os
import re
import signal

import pytest
from browser_helpers import (
    DESKTOP,
    PHONE,
    WAIT_MS,
    SocketProxy,
    ask,
    chromium_process,
    connect_webcam,
    launch_chromium,
    log_states,
    open_page,
    save_screenshot,
    sign_in,
    state_of,
)
from playwright.sync_api import Route, expect
from rtsp_helpers import rtsp_camera
from service_helpers import ENDED_WITHIN_S, MEDIA_TIMEOUT_S, serve, tiny_settings, wait_until

from streamguard.service import create_app

pytestmark = pytest.mark.browser
expect.set_options(timeout=WAIT_MS)

QUESTION = "What is happening?"
# Pixels in the overlay's semantic or spatial colour (the kept tokens' outlines): 0 until a chunk
# with kept video is drawn, so the page's polling waits for one.
KEPT_PIXELS = """() => {
  const canvas = document.getElementById("overlay");
  if (!(Number(canvas.dataset.highlighted) > 0)) return 0;
  const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
  const colours = [[0xe6, 0x9f, 0x00], [0x56, 0xb4, 0xe9]];
  let count = 0;
  for (let i = 0; i < data.length; i += 4) {
    const near = (c) => Math.abs(data[i] - c[0]) + Math.abs(data[i + 1] - c[1]) + Math.abs(data[i + 2] - c[2]) < 12;
    if (colours.some(near)) count += 1;
  }
  return count;
}"""
# Predicates are functions, not expressions (see browser_helpers.CHUNKS_COUNTED).
OVERLAY_DRAWN = "() => document.getElementById('overlay').dataset.chunk !== undefined"
NO_CHUNK_LABEL = "Retention overlay: no chunk yet"
# Two successive counts of one countdown on the state line ("Retrying in 2 s…", then "… 1 s…").
COUNTED_DOWN = """() => window.stateLog.some((entry, i) => {
  const count = (text) => Number(/Retrying in (\\d+) s…/.exec(text ?? "")?.[1]);
  return count(entry) > 1 && count(window.stateLog[i + 1]) === count(entry) - 1;
})"""
STREAMS_API = "**/v1/streams"
NOT_RTSP = "http://127.0.0.1/not-rtsp"
# More than `above` chunks counted on the dashboard card of stream `id`.
CARD_CHUNKS_ABOVE = """([id, above]) => {
  const value = document.querySelector(`[data-stream-id="${id}"] dd[data-stat=chunks_received]`);
  return Number(value?.textContent) > above;
}"""


@pytest.fixture(scope="module")
def service(checkpoint):
    with serve(create_app(tiny_settings(checkpoint))) as live:
        yield live


def test_webcam_page_streams_answers_and_shows_what_was_kept(service, browser):
    with open_page(browser, DESKTOP) as page:
        connect_webcam(page, service.url)

        answer = ask(page, QUESTION)
        expect(answer.locator(".question")).to_have_text(QUESTION)
        expect(answer).to_have_attribute("data-status", "done")
        assert int(answer.get_attribute("data-deltas") or 0) > 0, "the answer arrived without deltas"
        expect(answer.locator(".meta")).to_contain_text("tokens")
        expect(page.locator("#history")).to_have_attribute("aria-busy", "false")
        expect(page.locator("dd[data-stat=questions_answered]")).to_have_text("1")
        # the tiny config has no A2V predictor: the page says ContextGuard runs on its fallback
        expect(page.locator("#pruning")).to_contain_text("no A2V predictor configured")

        kept_pixels = page.wait_for_function(KEPT_PIXELS).json_value()
        assert kept_pixels > 0
        overlay = page.locator("#overlay")
        assert re.fullmatch(r"\d+x\d+x\d+", overlay.get_attribute("data-grid") or "")
        expect(overlay).to_have_attribute("aria-label", re.compile(r"Chunk \d+"))
        save_screenshot(page, "webcam")
        page.set_viewport_size(PHONE)
        save_screenshot(page, "webcam-phone")

        page.get_by_role("button", name="Disconnect").click()
        expect(state_of(page)).to_have_attribute("data-state", "ready")
    wait_until(lambda: service.http.get("/v1/streams").json()["streams"] == [], "the stream's removal")


def test_dashboard_adds_watches_and_removes_an_rtsp_camera(service, browser):
    with rtsp_camera() as camera, open_page(browser, DESKTOP) as page:
        page.goto(service.url + "/dashboard")
        sign_in(page)
        expect(state_of(page)).to_have_attribute("data-state", "live")
        expect(page.locator("#no-streams")).to_be_visible()
        # the test token is a user token: the page says it sees only its own streams
        expect(page.locator("#scope")).to_contain_text("only the streams this token opened")

        url_box = page.get_by_label("Add an RTSP camera")
        url_box.fill(NOT_RTSP)
        page.get_by_role("button", name="Add camera").click()
        refusal = service.http.post("/v1/streams", json={"source": "rtsp", "url": NOT_RTSP}).json()
        expect(page.locator("#add-camera-message")).to_contain_text(f"Not added ({refusal['error']['code']})")

        url_box.fill(camera.url)
        page.get_by_role("button", name="Add camera").click()
        card = page.locator(".stream-card").filter(has_text=camera.url)
        expect(card).to_have_attribute("data-state", "live")
        expect(card.locator(".pruning")).to_contain_text("contextguard, drop policy current")
        expect(page.get_by_role("button", name="Add camera")).to_be_enabled()
        stream_id = card.get_attribute("data-stream-id")
        page.wait_for_function(CARD_CHUNKS_ABOVE, arg=[stream_id, 0])
        counted = int(card.locator("dd[data-stat=chunks_received]").inner_text())
        page.wait_for_function(CARD_CHUNKS_ABOVE, arg=[stream_id, counted])  # the stats move
        expect(card.locator("figure canvas")).to_have_attribute(
            "aria-label", re.compile(r"dropped as redundant \(\d+ % skipped before encoding\)")
        )
        expect(card.locator(".last-chunk")).to_contain_text("Last chunk (")
        save_screenshot(page, "dashboard")
        page.set_viewport_size(PHONE)
        save_screenshot(page, "dashboard-phone")

        # the same camera twice: each Remove button names its own stream
        url_box.fill(camera.url)
        page.get_by_role("button", name="Add camera").click()
        expect(card).to_have_count(2)
        labels = [button.get_attribute("aria-label") for button in card.get_by_role("button").all()]
        assert len(set(labels)) == 2, f"two streams, one Remove label: {labels}"
        for label in labels:
            page.get_by_role("button", name=label, exact=True).click()
        expect(card).to_have_count(0)
        expect(page.locator("#no-streams")).to_be_visible()
    assert service.http.get("/v1/streams").json()["streams"] == []


def test_the_dashboard_finishes_signing_in_once_the_service_is_back(service, browser):
    with open_page(browser, PHONE) as page:
        page.goto(service.url + "/dashboard")
        sign_in(page)
        expect(state_of(page)).to_have_attribute("data-state", "live")
        page.route(STREAMS_API, lambda route: route.abort())  # down, as far as the page can tell
        page.reload()  # with the token it saved
        expect(state_of(page)).to_have_attribute("data-state", "unreachable")
        expect(state_of(page)).to_contain_text("Retrying in")
        expect(page.get_by_role("button", name="Add camera")).to_be_disabled()

        page.unroute(STREAMS_API)
        expect(state_of(page)).to_have_attribute("data-state", "live")
        expect(page.get_by_role("button", name="Add camera")).to_be_enabled()
        expect(page.get_by_role("button", name="Change token")).to_be_visible()


def test_a_wrong_token_shows_the_bad_token_state(service, browser):
    with open_page(browser, PHONE) as page:
        page.goto(service.url + "/")
        sign_in(page, "not-the-token")
        expect(state_of(page)).to_have_attribute("data-state", "bad-token")
        expect(page.locator("#token-form .message")).to_contain_text("invalid_token")
        expect(page.get_by_role("button", name="Connect", exact=True)).to_be_disabled()
        save_screenshot(page, "webcam-bad-token")

        page.goto(service.url + "/dashboard")
        sign_in(page, "not-the-token")
        expect(state_of(page)).to_have_attribute("data-state", "bad-token")
        expect(page.get_by_role("button", name="Add camera")).to_be_disabled()


def test_a_blocked_camera_shows_the_no_camera_state(service, playwright, tmp_path):
    with (
        launch_chromium(playwright, tmp_path, allow_camera=False) as blocked,
        open_page(blocked, PHONE) as page,
    ):
        page.goto(service.url + "/")
        expect(state_of(page)).to_have_attribute("data-state", "no-camera")
        expect(state_of(page)).to_contain_text("denied")
        sign_in(page, "not-the-token")
        expect(state_of(page)).to_have_attribute("data-state", "bad-token")
        sign_in(page)
        expect(page.locator("#token-form")).to_be_hidden()
        expect(state_of(page)).to_have_attribute("data-state", "no-camera")  # the news again
        expect(state_of(page)).to_contain_text("denied")
        expect(page.get_by_role("button", name="Connect", exact=True)).to_be_disabled()
        expect(page.get_by_role("button", name="Try the camera again")).to_be_visible()

        # an outage while signing in passes, and the missing camera is the news again
        page.route(STREAMS_API, lambda route: route.abort())
        page.reload()
        expect(state_of(page)).to_have_attribute("data-state", "unreachable")
        page.unroute(STREAMS_API)
        expect(state_of(page)).to_have_attribute("data-state", "no-camera")
        expect(state_of(page)).to_contain_text("denied")


def test_a_still_camera_shows_video_skipped_before_encoding(service, playwright, tmp_path):
    with (
        launch_chromium(playwright, tmp_path, motion="static") as still,
        open_page(still, DESKTOP) as page,
    ):
        connect_webcam(page, service.url)
        overlay = page.locator("#overlay")
        # the pixel pre-filter finds the still picture unchanged: no vision encoder, video dropped
        expect(overlay).to_have_attribute("data-skipped", "true")
        expect(overlay).to_have_attribute("data-dropped", "true")
        expect(overlay).to_have_attribute("aria-label", re.compile("video dropped as redundant"))
        expect(page.locator("#overlay-caption")).to_contain_text("skipped before encoding")
        assert int(page.locator("dd[data-stat=chunks_dropped_redundant]").inner_text()) > 0
        assert int(page.locator("dd[data-stat=chunks_encoder_skipped]").inner_text()) > 0
        save_screenshot(page, "webcam-dropped")
        page.get_by_role("button", name="Disconnect").click()
        expect(state_of(page)).to_have_attribute("data-state", "ready")
    wait_until(lambda: service.http.get("/v1/streams").json()["streams"] == [], "the stream's removal")


def test_a_dropped_connection_reconnects_and_cut_off_answers_say_so(service, browser):
    with open_page(browser, DESKTOP) as page:
        proxy = SocketProxy(page)
        connect_webcam(page, service.url)
        history = page.locator("#history")
        answer = history.locator("li.qa").first

        proxy.hold_answers = True
        ask(page, QUESTION)
        expect(answer).to_have_attribute("data-status", "streaming")
        expect(history).to_have_attribute("aria-busy", "true")  # deltas are not read out one by one

        proxy.refuse = True
        proxy.drop()
        expect(state_of(page)).to_have_attribute("data-state", "reconnecting")
        expect(state_of(page)).to_contain_text("Retrying in")
        expect(answer).to_have_attribute("data-status", "error")
        expect(answer.locator(".meta")).to_contain_text("Interrupted")
        expect(history).to_have_attribute("aria-busy", "false")
        save_screenshot(page, "webcam-reconnecting")

        proxy.refuse = False
        expect(state_of(page)).to_have_attribute("data-state", "live")
        ask(page, QUESTION)
        expect(answer).to_have_attribute("data-status", "streaming")
        page.get_by_role("button", name="Disconnect").click()
        expect(answer).to_have_attribute("data-status", "error")
        expect(answer.locator(".meta")).to_contain_text("disconnected")
        expect(answer.get_by_role("button", name=re.compile("Cancel"))).to_have_count(0)
        expect(history).to_have_attribute("aria-busy", "false")
    wait_until(lambda: service.http.get("/v1/streams").json()["streams"] == [], "the stream's removal")


def test_qwen3_omni_overlay_draws_its_grid_of_32_px_tokens(qwen3_checkpoint, browser):
    """The webcam page on the Qwen3-Omni thinker: an answer streams in, and the overlay draws the
    grid the service sends, Qwen3-Omni's own: the 320×240 fake camera resized to 192×128 is 6×4
    tokens of 32 px in each of the chunk's two 2-frame groups."""
    settings = tiny_settings(qwen3_checkpoint, config="tiny-qwen3-omni")
    with serve(create_app(settings)) as live, open_page(browser, DESKTOP) as page:
        connect_webcam(page, live.url)
        expect(ask(page, QUESTION)).to_have_attribute("data-status", "done")
        assert page.wait_for_function(KEPT_PIXELS).json_value() > 0
        expect(page.locator("#overlay")).to_have_attribute("data-grid", "2x4x6")
        [stream] = live.http.get("/v1/streams").json()["streams"]
        last = stream["stats"]["last_chunk"]
        assert last["grid"] == [2, 4, 6] and last["resized_hw"] == [128, 192] and last["audio_tokens"] == 26
        save_screenshot(page, "webcam-qwen3-omni")
        page.get_by_role("button", name="Disconnect").click()
        expect(state_of(page)).to_have_attribute("data-state", "ready")


def test_a_deleted_stream_and_a_stopped_service_show_as_such(checkpoint, browser):
    with open_page(browser, PHONE) as page:
        with serve(create_app(tiny_settings(checkpoint))) as live:
            connect_webcam(page, live.url)
            page.wait_for_function(OVERLAY_DRAWN)
            (stream,) = live.http.get("/v1/streams").json()["streams"]
            live.http.delete(f"/v1/streams/{stream['id']}").raise_for_status()  # an operator removes it
            expect(state_of(page)).to_have_attribute("data-state", "ended")
            expect(state_of(page)).to_contain_text("deleted")

            # while the new stream's offer is held, nothing of the old stream is on show
            held: list[Route] = []
            page.route("**/v1/streams/webrtc", lambda route: held.append(route))
            with page.expect_request("**/v1/streams/webrtc"):
                page.get_by_role("button", name="Connect", exact=True).click()
            expect(state_of(page)).to_have_attribute("data-state", "connecting")
            expect(page.locator("#overlay")).to_have_attribute("aria-label", NO_CHUNK_LABEL)
            assert not page.evaluate(OVERLAY_DRAWN)
            expect(page.locator("#overlay-caption")).to_contain_text("No chunk yet")
            expect(page.locator("#stats dd")).to_have_count(0)
            (offer,) = held
            offer.continue_()
            page.unroute("**/v1/streams/webrtc")
            expect(state_of(page)).to_have_attribute("data-state", "live")
            log_states(page)
        # the service closes its sockets on the way down, then stops answering at all; the
        # page counts down to each retry
        expect(state_of(page)).to_have_attribute("data-state", "unreachable")
        page.wait_for_function(COUNTED_DOWN)
        save_screenshot(page, "webcam-service-stopped")


def test_the_webcam_page_asks_about_the_last_minutes_and_shows_what_was_recalled(
    checkpoint, browser, tmp_path
):
    settings = tiny_settings(
        checkpoint, session={"token_budget": 250}, memory={"enabled": True, "root": str(tmp_path / "memory")}
    )
    with open_page(browser, DESKTOP) as page, serve(create_app(settings)) as live:
        connect_webcam(page, live.url)
        in_memory = page.locator("dd[data-stat=chunks_offloaded]")
        page.wait_for_function(
            "() => Number(document.querySelector('dd[data-stat=chunks_offloaded]')?.textContent) > 0"
        )
        expect(page.locator("#recall-hint")).to_contain_text("older chunks in memory")
        assert int(in_memory.text_content() or 0) > 0

        recall = page.get_by_label("Answer over")
        recall.select_option("minutes")
        page.get_by_label("Minutes").fill("1")
        answer = ask(page, QUESTION)
        expect(answer).to_have_attribute("data-status", "done")
        expect(answer.locator(".recall-note")).to_contain_text("last 1 min")
        expect(answer.locator(".recall-timeline .recall-span")).not_to_have_count(0)
        expect(answer.locator(".recall-timeline")).to_have_attribute(
            "aria-label", re.compile("^Recalled from the stream")
        )

        recall.select_option("auto")
        auto = ask(page, "When did it change?")
        expect(auto).to_have_attribute("data-status", "done")
        expect(auto.locator(".recall-note")).to_contain_text("auto")
        save_screenshot(page, "webcam-recall")


def test_a_killed_browser_s_stream_ends_within_the_media_timeout(checkpoint, playwright, tmp_path):
    settings = tiny_settings(checkpoint, webrtc_media_timeout_s=MEDIA_TIMEOUT_S)
    with serve(create_app(settings)) as live, chromium_process(playwright, tmp_path) as (browser, process):
        page = browser.contexts[0].new_page()
        page.set_default_timeout(WAIT_MS)
        connect_webcam(page, live.url)
        (stream,) = live.http.get("/v1/streams").json()["streams"]
        os.killpg(process.pid, signal.SIGKILL)  # no pagehide DELETE, no BYE: the browser is gone
        ended = wait_until(
            lambda: (s := live.stream(stream["id"]))["state"] == "ended" and s,
            "the killed browser's stream to end",
            timeout_s=ENDED_WITHIN_S,
        )
        assert f"no media from the peer for {MEDIA_TIMEOUT_S:g} s" in ended["error"]
