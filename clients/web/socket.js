// One stream's websocket: questions out; answer deltas, stats and errors in; reconnects on drops.

import { socketUrl } from "./api.js";
import { Backoff } from "./backoff.js";

// Close codes after which reconnecting cannot help (service/auth.py: 4000 + HTTP status).
const FINAL_CLOSES = {
  4401: "bad-token",
  4403: "bad-token",
  4404: "ended", // the stream is gone
  4410: "ended", // the stream was deleted while we were connected
};

/**
 * Events (CustomEvent, payload in `detail`): "open"; "stats" (StreamInfo); "delta" and "done"
 * (answer.delta / answer.done); "error" (the error event); "moved" (stream.moved: its worker
 * drained, it runs on elsewhere); "reconnecting" ({attempt, delayMs});
 * "ended" ({reason: "bad-token" | "ended", code, message}); "draining" (stream.ending with
 * reason worker_draining: the stream ended because its worker shuts down, and cannot move).
 */
export class StreamSocket extends EventTarget {
  #socket = null;
  #closing = false;
  #backoff = new Backoff();
  #timer = null;
  #lastError = null;
  #ending = null; // the stream.ending event, before the close that follows it

  #origin;

  /** `origin`: the worker holding the stream (placement's pick); reconnections after a drop go
   * through the page's own origin instead, where any worker serves any stream. */
  constructor(streamId, statsIntervalS, origin = location.origin) {
    super();
    this.streamId = streamId;
    this.statsIntervalS = statsIntervalS;
    this.#origin = origin;
  }

  open() {
    this.#closing = false;
    this.#connect();
  }

  close() {
    this.#closing = true;
    clearTimeout(this.#timer);
    this.#socket?.close(1000, "client disconnected");
  }

  get isOpen() {
    return this.#socket?.readyState === WebSocket.OPEN;
  }

  /** @param {string | object | undefined} recall  see recall.js; undefined: the service's default */
  ask(id, text, recall) {
    this.#send({ type: "question.ask", id, text, ...(recall === undefined ? {} : { recall }) });
  }

  cancel(id) {
    this.#send({ type: "question.cancel", id });
  }

  #send(message) {
    if (!this.isOpen) throw new Error("not connected to the stream");
    this.#socket.send(JSON.stringify(message));
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  #connect() {
    const socket = new WebSocket(socketUrl(this.streamId, this.#origin));
    this.#socket = socket;
    this.#lastError = null;
    socket.addEventListener("open", () => {
      this.#backoff.reset();
      socket.send(JSON.stringify({ type: "stats.subscribe", interval_s: this.statsIntervalS }));
      this.#emit("open");
    });
    socket.addEventListener("message", (event) => this.#receive(event.data));
    socket.addEventListener("close", (event) => this.#closed(event));
  }

  #receive(raw) {
    const message = JSON.parse(raw);
    switch (message.type) {
      case "answer.delta":
        this.#emit("delta", message);
        break;
      case "answer.done":
        this.#emit("done", message);
        break;
      case "stream.stats":
        this.#emit("stats", message.stream);
        break;
      case "stream.moved":
        // its worker drained; the close (4307) that follows reconnects, through any worker
        this.#emit("moved", message);
        break;
      case "stream.ending":
        // media_timeout (the peer went silent): the stream is ended and the socket stays open;
        // its state and error come with the next stats
        if (message.reason !== "worker_draining") break;
        // a WebRTC or file stream whose worker shuts down; the close (4410) ends it with this
        this.#ending = message;
        this.#lastError = { message: "the stream ended: its worker is shutting down" };
        break;
      case "error":
        this.#lastError = message;
        this.#emit("error", message);
        break;
      default:
        console.warn("unknown message from the service", message);
    }
  }

  #closed(event) {
    if (this.#closing) return;
    if (this.#ending?.reason === "worker_draining") {
      this.#emit("draining", this.#ending);
      return;
    }
    const reason = FINAL_CLOSES[event.code];
    if (reason) {
      // the service sends an `error` event with the reason just before a refusal's close
      const message = this.#lastError?.message ?? (event.reason || `closed with code ${event.code}`);
      this.#emit("ended", { reason, code: event.code, message });
      return;
    }
    this.#origin = location.origin;
    const delayMs = this.#backoff.next();
    this.#emit("reconnecting", { attempt: this.#backoff.attempts, delayMs });
    this.#timer = setTimeout(() => this.#connect(), delayMs);
  }
}
