// The webcam page: preview, connect over WebRTC, ask questions, watch stats and the overlay.

import { ApiError, UnreachableError, removeStream, removeStreamOnUnload, serviceReachable } from "./api.js";
import { Backoff } from "./backoff.js";
import { FrameHistory, clearOverlay, drawOverlay } from "./overlay.js";
import { QuestionLog } from "./questions.js";
import { recallValue } from "./recall.js";
import { StreamSocket } from "./socket.js";
import { showCountdown, showState } from "./state.js";
import { describePruning, renderStats } from "./stats.js";
import { TokenGate } from "./token.js";
import { connectPeer, openCamera } from "./webrtc.js";

const STATS_INTERVAL_S = 0.5;
const PAGE_STATS = [
  "chunks_received",
  "chunks_processed",
  "chunks_dropped_redundant",
  "chunks_encoder_skipped",
  "chunks_shed",
  "compression",
  "real_time_factor",
  "kv_tokens",
  "chunks_offloaded",
  "questions_answered",
  "answer_latency",
];
const CAMERA_ERRORS = {
  NotAllowedError: "Camera and microphone access was denied. Allow both in the site settings, then try again.",
  NotFoundError: "No camera or microphone was found.",
  NotReadableError: "The camera or microphone is in use by another application.",
  SecurityError: "The browser allows cameras only on https:// or localhost pages.",
};

const byId = (id) => document.getElementById(id);
const ui = {
  state: byId("state"),
  preview: byId("preview"),
  connect: byId("connect"),
  disconnect: byId("disconnect"),
  retryCamera: byId("retry-camera"),
  questionForm: byId("question-form"),
  question: byId("question"),
  ask: byId("ask"),
  stats: byId("stats"),
  statsHint: byId("stats-hint"),
  pruning: byId("pruning"),
  overlay: byId("overlay"),
  caption: byId("overlay-caption"),
  recall: byId("recall"),
  recallMode: byId("recall-mode"),
  recallMinutes: byId("recall-minutes"),
  recallHint: byId("recall-hint"),
};

// the overlay before a stream's first chunk, as the page was served
const NO_CHUNK = {
  width: ui.overlay.width,
  height: ui.overlay.height,
  label: ui.overlay.getAttribute("aria-label"),
  caption: ui.caption.textContent,
};

const frames = new FrameHistory(ui.preview);
const questions = new QuestionLog(byId("history"), (id) => socket?.cancel(id));
const signInRetry = new Backoff();
let signInTimer = null;
const reofferRetry = new Backoff();
let reofferTimer = null;
let media = null;
let cameraError = ""; // why there is no media, the news until the camera works
let peer = null;
let socket = null;
let streamId = null;
let timing = null; // the stream's chunk length and sampling rate (StreamInfo.chunk)
let lastChunk = null; // the ChunkOverlay on show
let streamSeconds = 0; // how far the stream has come (the end of its last processed chunk)
let hasMemory = false; // the stream keeps evicted chunks (stats.memory.enabled): recall works
let questionCount = 0;
let signedIn = false;
let sourceEnded = false; // the stream's media stopped; its context still answers questions
let mediaInterrupted = false; // the media connection is disconnected and may come back

/** Buttons follow the state: connect needs a camera, an accepted token and no stream yet. */
function updateControls() {
  ui.connect.disabled = !(signedIn && media && !streamId);
  ui.disconnect.disabled = !streamId;
  ui.ask.disabled = !socket?.isOpen;
  ui.recall.disabled = !(socket?.isOpen && hasMemory);
}

const gate = new TokenGate({
  form: byId("token-form"),
  changeButton: byId("change-token"),
  onAccepted: () => {
    signedIn = true;
    signInRetry.reset();
    if (!streamId) showIdle();
    updateControls();
  },
  onFailed: (error) => {
    signedIn = false;
    updateControls();
    clearTimeout(signInTimer);
    if (error instanceof UnreachableError) {
      const delayMs = signInRetry.next();
      showCountdown(ui.state, "unreachable", "The service cannot be reached.", performance.now() + delayMs);
      signInTimer = setTimeout(() => gate.check(), delayMs);
    } else {
      showRequestError(error);
    }
  },
});

/** The state line while no stream runs: what stands between the user and connecting. */
function showIdle() {
  if (!media) showState(ui.state, "no-camera", cameraError);
  else if (signedIn) showState(ui.state, "ready", "Ready. Connect to stream your camera.");
  else showState(ui.state, "signed-out", "Enter the service's access token to start.");
}

function showRequestError(error) {
  if (error instanceof UnreachableError) {
    showState(ui.state, "unreachable", "The service cannot be reached. Check it is running, then connect again.");
  } else if (error instanceof ApiError && error.isBadToken) {
    showState(ui.state, "bad-token", `The service refused the token (${error.code}). Enter a valid one.`);
  } else {
    showState(ui.state, "error", `Could not connect: ${error.message}`);
  }
}

async function startCamera() {
  ui.retryCamera.hidden = true;
  try {
    media = await openCamera();
    ui.preview.srcObject = media;
  } catch (error) {
    media = null;
    cameraError = CAMERA_ERRORS[error.name] ?? `The camera could not start: ${error.message}`;
    ui.retryCamera.hidden = false;
  }
  showIdle();
  updateControls();
}

/** Offer the camera and open the stream's socket; false when the offer failed (the state line
 * says why). */
async function connect() {
  clearTimeout(reofferTimer);
  ui.connect.disabled = true;
  clearStreamView();
  showState(ui.state, "connecting", "Connecting: offering the camera to the service…");
  let connection;
  try {
    connection = await connectPeer(media);
  } catch (error) {
    if (error instanceof ApiError && error.isBadToken) refuseToken(error);
    showRequestError(error);
    updateControls();
    return false;
  }
  peer = connection.peer;
  streamId = connection.stream.id;
  timing = connection.stream.chunk;
  sourceEnded = false;
  mediaInterrupted = false;
  peer.addEventListener("connectionstatechange", mediaStateChanged);
  socket = new StreamSocket(streamId, STATS_INTERVAL_S, connection.origin);
  socket.addEventListener("open", () => {
    showConnected();
    updateControls();
  });
  socket.addEventListener("stats", (event) => showStream(event.detail));
  socket.addEventListener("delta", (event) => questions.delta(event.detail));
  socket.addEventListener("done", (event) => questions.done(event.detail, streamSeconds));
  socket.addEventListener("error", (event) => {
    const error = event.detail;
    if (error.id) questions.fail(error.id, `${error.code}: ${error.message}`);
  });
  socket.addEventListener("reconnecting", (event) => connectionLost(event.detail));
  socket.addEventListener("ended", (event) => streamEnded(event.detail));
  socket.addEventListener("draining", workerDraining);
  socket.open();
  updateControls();
  return true;
}

/** The worker holding the stream shuts down (a deploy): the stream cannot move, its media goes
 * to that worker. Offer the camera again through this page's origin (the load balancer), which
 * places it on a worker with room; the answers so far stay on the page. */
function workerDraining() {
  closeStream("Not answered: the worker holding the stream shut down.");
  reofferRetry.reset();
  offerAgain();
}

function offerAgain() {
  const delayMs = reofferRetry.next();
  const text = `The worker holding the stream is shutting down; offering the camera again (attempt ${reofferRetry.attempts}).`;
  showCountdown(ui.state, "reconnecting", text, performance.now() + delayMs);
  reofferTimer = setTimeout(async () => {
    if (streamId) return; // connected meanwhile
    if (!media) {
      showIdle(); // the camera is gone: nothing to offer
      return;
    }
    const connected = await connect();
    if (!connected && signedIn) offerAgain();
  }, delayMs);
}

/** A new stream starts with a blank overlay and no stats: nothing of the last one lingers. */
function clearStreamView() {
  lastChunk = null;
  streamSeconds = 0;
  hasMemory = false;
  ui.recallHint.textContent = "Connect to see whether the stream has long memory.";
  clearOverlay(ui.overlay, NO_CHUNK);
  ui.caption.textContent = NO_CHUNK.caption;
  ui.stats.replaceChildren();
  ui.statsHint.hidden = false;
  ui.pruning.hidden = true;
}

/** The state line while the stream's socket is open. */
function showConnected() {
  if (sourceEnded) showState(ui.state, "ended", "Reconnected to the ended stream: ask about what it saw.");
  else if (mediaInterrupted) showMediaInterrupted();
  else showState(ui.state, "live", `Live: streaming to the service (stream ${streamId.slice(0, 8)}).`);
}

function showMediaInterrupted() {
  showState(ui.state, "reconnecting", "The camera's connection to the service is interrupted. Waiting for it to come back…");
}

function refuseToken(error) {
  signedIn = false;
  gate.refuse(error);
}

function mediaStateChanged(event) {
  const connection = event.target;
  if (connection !== peer || sourceEnded) return; // a closed stream's peer, or media already over
  switch (connection.connectionState) {
    case "connected":
      if (mediaInterrupted) {
        mediaInterrupted = false;
        if (socket?.isOpen) showConnected();
      } else {
        // stream time starts when media starts flowing: the chunks' times count from there
        frames.start(timing.fps);
      }
      break;
    case "disconnected": // ICE may still find its way back; "failed" follows if it does not
      mediaInterrupted = true;
      showMediaInterrupted();
      break;
    case "failed":
      mediaInterrupted = false;
      sourceStopped("the media connection failed");
      break;
  }
}

function showStream(stream) {
  ui.statsHint.hidden = true;
  ui.pruning.hidden = false;
  ui.pruning.textContent = describePruning(stream.pruning);
  renderStats(ui.stats, PAGE_STATS, stream.stats);
  showMemory(stream.stats.memory);
  const chunk = stream.stats.last_chunk;
  if (chunk) streamSeconds = chunk.start + timing.seconds;
  if (chunk && chunk.index !== lastChunk?.index) {
    lastChunk = chunk;
    ui.caption.textContent = drawOverlay(ui.overlay, chunk, frames, timing.seconds);
  }
  const stopped = stream.state === "ended" || stream.state === "error";
  if (stopped && !sourceEnded) sourceStopped(stream.error ?? "the camera stopped sending");
}

/** The recall picker works on a stream with long memory; it says what memory holds. */
function showMemory(memory) {
  hasMemory = Boolean(memory?.enabled);
  updateControls();
  ui.recallHint.textContent = hasMemory
    ? `${memory.chunks_held} older chunks in memory (${size(memory.host_bytes)} RAM, ${size(memory.disk_bytes)} disk)`
    : "This stream has no long memory: answers use the recent window.";
}

const size = (bytes) =>
  bytes < 2 ** 20 ? `${Math.round(bytes / 1024)} KiB` : `${(bytes / 2 ** 20).toFixed(1)} MiB`;

/** The media stopped, but the service keeps the stream's context: questions still work until
 * Disconnect deletes it. */
function sourceStopped(why) {
  sourceEnded = true;
  peer?.close();
  frames.stop();
  showState(ui.state, "ended", `Stream ended: ${why}. Ask about what it saw, or disconnect to free it.`);
}

async function connectionLost({ attempt, delayMs }) {
  updateControls();
  questions.interruptAll("Interrupted: the connection to the service dropped.");
  const retryAt = performance.now() + delayMs;
  const reachable = await serviceReachable();
  if (!socket || socket.isOpen) return; // back (or gone) while we asked
  if (reachable) {
    const text = `The connection to the stream dropped; the service is up (reconnect attempt ${attempt}).`;
    showCountdown(ui.state, "reconnecting", text, retryAt);
  } else {
    showCountdown(ui.state, "unreachable", "The service cannot be reached.", retryAt);
  }
}

/** The websocket was refused for good: the stream is gone, or the token no longer works. */
function streamEnded({ reason, message }) {
  if (reason === "bad-token") {
    refuseToken(new ApiError(403, "invalid_token", message));
    showState(ui.state, "bad-token", "The service refused the token. Enter a valid one, then connect again.");
  } else {
    showState(ui.state, "ended", `Stream ended: ${message}. Its questions and answers stay here.`);
  }
  closeStream("Not answered: the stream ended.");
}

/** Let the stream go; answers still being written will not be, and say `why`. */
function closeStream(why) {
  questions.interruptAll(why);
  socket?.close();
  peer?.close();
  frames.stop();
  socket = peer = streamId = null;
  updateControls();
}

async function disconnect() {
  clearTimeout(reofferTimer);
  const id = streamId;
  closeStream("Not answered: disconnected before the answer was done.");
  showState(ui.state, "ready", "Disconnected. Connect again to start a new stream.");
  try {
    await removeStream(id);
  } catch (error) {
    // already gone (404) is what we wanted; anything else is worth seeing
    if (!(error instanceof ApiError && error.status === 404)) showRequestError(error);
  }
}

function ask(event) {
  event.preventDefault();
  const text = ui.question.value.trim();
  if (!text || !socket?.isOpen) return;
  questionCount += 1;
  const id = `q${questionCount}-${Date.now().toString(36)}`;
  const mode = ui.recallMode.value;
  const minutes = Number(ui.recallMinutes.value) || 5;
  if (hasMemory) {
    questions.add(id, text, { mode, minutes });
    socket.ask(id, text, recallValue(mode, minutes));
  } else {
    questions.add(id, text);
    socket.ask(id, text);
  }
  ui.question.value = "";
}

ui.connect.addEventListener("click", connect);
ui.disconnect.addEventListener("click", disconnect);
ui.retryCamera.addEventListener("click", startCamera);
ui.questionForm.addEventListener("submit", ask);
ui.recallMode.addEventListener("change", () => {
  ui.recallMinutes.hidden = ui.recallMode.value !== "minutes";
});
// the overlay's layout follows its width (side by side or stacked); its height is its own doing
let overlayWidth = ui.overlay.clientWidth;
new ResizeObserver(() => {
  if (ui.overlay.clientWidth === overlayWidth) return;
  overlayWidth = ui.overlay.clientWidth;
  if (lastChunk) drawOverlay(ui.overlay, lastChunk, frames, timing.seconds);
}).observe(ui.overlay);
addEventListener("pagehide", () => {
  if (streamId) removeStreamOnUnload(streamId);
});

(async () => {
  await startCamera();
  gate.start();
})();
