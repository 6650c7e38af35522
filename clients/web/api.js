// The service's REST API as this page calls it, with the bearer token the user gave this tab.

const TOKEN_KEY = "streamguard.token";
// Placement (streamguard/vocabulary.py): a full worker names one with room instead of a 307,
// which fetch could not follow with the token (a cross-origin redirect drops Authorization).
const REDIRECT_HEADER = "StreamGuard-Redirect";
const MAX_PLACEMENT_HOPS = 3; // a second hop only when the chosen worker filled up meanwhile

/** A refusal from the service: its HTTP status and error code (see service/protocol.py);
 * `workerUrl`: a full worker's pick of one with room, where the same request may go. */
export class ApiError extends Error {
  constructor(status, code, message, workerUrl = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.workerUrl = workerUrl;
  }

  get isBadToken() {
    return this.status === 401 || this.status === 403;
  }
}

/** The request never got an answer: the service is down or the network is. */
export class UnreachableError extends Error {}

export function savedToken() {
  return sessionStorage.getItem(TOKEN_KEY) ?? "";
}

export function saveToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

function authHeaders() {
  return { Authorization: `Bearer ${savedToken()}` };
}

/** `path` on this page's origin, or an absolute URL of another worker of the cluster. */
export async function request(method, path, body, extraHeaders = {}) {
  const headers = { ...authHeaders(), ...extraHeaders };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch {
    throw new UnreachableError(`the service at ${new URL(path, location.href).host} cannot be reached`);
  }
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = data?.error;
    throw new ApiError(
      response.status,
      error?.code ?? `http_${response.status}`,
      error?.message ?? `${method} ${path} was answered with HTTP ${response.status}`,
      error?.worker_url ?? null,
    );
  }
  return data;
}

/** `{streams, viewer}`: the streams this token may see, and who it is (`viewer.sees_all_streams`
 * is false for a user token, which sees only the streams it opened). */
export function listStreams() {
  return request("GET", "/v1/streams");
}

export function addRtspStream(url) {
  return request("POST", "/v1/streams", { source: "rtsp", url });
}

export function removeStream(streamId) {
  return request("DELETE", `/v1/streams/${encodeURIComponent(streamId)}`);
}

/** Best effort while the page unloads: keepalive lets the request outlive the page. */
export function removeStreamOnUnload(streamId) {
  fetch(`/v1/streams/${encodeURIComponent(streamId)}`, {
    method: "DELETE",
    headers: authHeaders(),
    keepalive: true,
  }).catch(() => {});
}

/**
 * Non-trickle signalling: the complete offer in, the complete answer and the new stream out.
 * Offered through this page's origin (the load balancer); a full worker names one with room,
 * and the offer goes there, token and all.
 * @returns {Promise<{answer: object, origin: string}>} the answer, and the origin of the worker
 *   that took the stream (its websocket is opened there)
 */
export async function sendWebrtcOffer(description) {
  const offer = { sdp: description.sdp, type: description.type };
  let url = new URL("/v1/streams/webrtc", location.href).href;
  for (let hop = 0; ; hop += 1) {
    try {
      const answer = await request("POST", url, offer, { [REDIRECT_HEADER]: "manual" });
      return { answer, origin: new URL(url).origin };
    } catch (error) {
      if (!(error instanceof ApiError && error.workerUrl) || hop >= MAX_PLACEMENT_HOPS) throw error;
      url = new URL(error.workerUrl, url).href;
    }
  }
}

/** The stream's websocket on `origin` (a worker's, else this page's). Browsers cannot set
 * headers on a websocket, so the token travels as `?token=`. */
export function socketUrl(streamId, origin = location.origin) {
  const url = new URL(`/v1/streams/${encodeURIComponent(streamId)}/ws`, origin);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("token", savedToken());
  return url.href;
}

/** True when the service answers at all (no token needed). */
export async function serviceReachable() {
  try {
    return (await fetch("/healthz", { cache: "no-store" })).ok;
  } catch {
    return false;
  }
}
