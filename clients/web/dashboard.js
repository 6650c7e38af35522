// The operator dashboard: the streams the token sees (an admin token: every stream; a user token:
// the ones it opened, as the page says), polled once a second; add RTSP cameras, remove streams.

import { ApiError, UnreachableError, addRtspStream, listStreams, removeStream } from "./api.js";
import { Backoff } from "./backoff.js";
import { StreamCard } from "./stream-card.js";
import { showCountdown, showState } from "./state.js";
import { TokenGate } from "./token.js";

const POLL_MS = 1000;

const byId = (id) => document.getElementById(id);
const ui = {
  state: byId("state"),
  addForm: byId("add-camera"),
  url: byId("rtsp-url"),
  addButton: byId("add-camera-button"),
  addMessage: byId("add-camera-message"),
  list: byId("streams"),
  empty: byId("no-streams"),
  scope: byId("scope"),
};
const cards = new Map();
const outage = new Backoff();
let pollTimer = null;
let signedIn = false;

const gate = new TokenGate({
  form: byId("token-form"),
  changeButton: byId("change-token"),
  onAccepted: (list) => {
    signedIn = true;
    ui.addButton.disabled = false;
    listed(list);
  },
  onFailed: failed,
});

/** A fresh stream list: show it, and ask again in a second. */
function listed({ streams, viewer }) {
  outage.reset();
  showScope(viewer);
  show(streams);
  schedule(POLL_MS);
}

/** Say whose streams the list holds: a user token sees only the streams it opened. */
function showScope(viewer) {
  ui.scope.hidden = false;
  ui.scope.dataset.scope = viewer.sees_all_streams ? "all" : "own";
  ui.scope.textContent = viewer.sees_all_streams
    ? `Signed in as ${viewer.name} (${viewer.role}): every stream of this worker.`
    : `Signed in as ${viewer.name} (${viewer.role}): only the streams this token opened. ` +
      "Other tokens' streams are not shown; an admin token sees them all.";
}

function failed(error) {
  if (error instanceof UnreachableError) {
    const delayMs = outage.next();
    showCountdown(ui.state, "unreachable", "The service cannot be reached.", performance.now() + delayMs);
    schedule(delayMs);
  } else if (error instanceof ApiError && error.isBadToken) {
    signedIn = false;
    clearTimeout(pollTimer);
    ui.addButton.disabled = true;
    showState(ui.state, "bad-token", `The service refused the token (${error.code}). Enter a valid one.`);
  } else {
    showState(ui.state, "error", `The stream list failed: ${error.message}`);
    schedule(POLL_MS);
  }
}

/** Until a token is accepted each try goes through the gate, which finishes signing in. */
function schedule(delayMs) {
  clearTimeout(pollTimer);
  pollTimer = setTimeout(() => (signedIn ? poll() : gate.check()), delayMs);
}

async function poll() {
  try {
    listed(await listStreams());
  } catch (error) {
    if (error instanceof ApiError && error.isBadToken) gate.refuse(error);
    failed(error);
  }
}

function show(streams) {
  const now = performance.now() / 1000;
  const seen = new Set();
  for (const stream of streams) {
    seen.add(stream.id);
    let card = cards.get(stream.id);
    if (!card) {
      card = new StreamCard(stream, remove);
      cards.set(stream.id, card);
      ui.list.append(card.element);
    }
    card.update(stream, now);
  }
  for (const [id, card] of cards) {
    if (!seen.has(id)) forget(card);
  }
  ui.empty.hidden = streams.length > 0;
  const live = streams.filter((stream) => stream.state === "live").length;
  showState(ui.state, "live", `${streams.length} stream${streams.length === 1 ? "" : "s"}, ${live} live. Updated every second.`);
}

function forget(card) {
  card.element.remove();
  cards.delete(card.id);
}

async function remove(card) {
  card.removeButton.disabled = true;
  try {
    await removeStream(card.id);
    forget(card);
    ui.addMessage.textContent = `Removed stream ${card.name}.`;
  } catch (error) {
    card.removeButton.disabled = false;
    if (error instanceof ApiError && error.status === 404) {
      forget(card);
    } else if (error instanceof ApiError && error.isBadToken) {
      gate.refuse(error);
      failed(error);
    } else {
      showState(ui.state, "error", `Could not remove the stream: ${error.message}`);
    }
  }
}

async function addCamera(event) {
  event.preventDefault();
  const url = ui.url.value.trim();
  ui.addButton.disabled = true;
  ui.addMessage.textContent = `Adding ${url}…`;
  try {
    const stream = await addRtspStream(url);
    ui.addMessage.textContent = `Added ${stream.source} (stream ${stream.id.slice(0, 8)}).`;
    ui.url.value = "";
    poll();
  } catch (error) {
    ui.addMessage.textContent =
      error instanceof ApiError ? `Not added (${error.code}): ${error.message}` : `Not added: ${error.message}`;
    if (error instanceof ApiError && error.isBadToken) {
      gate.refuse(error);
      failed(error);
      return;
    }
  }
  ui.addButton.disabled = false;
}

ui.addForm.addEventListener("submit", addCamera);
showState(ui.state, "signed-out", "Enter the service's access token to see its streams.");
gate.start();
