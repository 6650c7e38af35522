// The service's REST API as this page calls it, with the bearer token the user gave this tab.

const TOKEN_KEY = "streamguard.token";

/** A refusal from the service: its HTTP status and error code (see service/protocol.py). */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
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

export async function request(method, path, body) {
  const headers = authHeaders();
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
    throw new UnreachableError(`the service at ${location.host} cannot be reached`);
  }
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = data?.error;
    throw new ApiError(
      response.status,
      error?.code ?? `http_${response.status}`,
      error?.message ?? `${method} ${path} was answered with HTTP ${response.status}`,
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

/** Non-trickle signalling: the complete offer in, the complete answer and the new stream out. */
export function sendWebrtcOffer(description) {
  return request("POST", "/v1/streams/webrtc", { sdp: description.sdp, type: description.type });
}

/** Browsers cannot set headers on a websocket, so the token travels as `?token=`. */
export function socketUrl(streamId) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const token = encodeURIComponent(savedToken());
  return `${scheme}//${location.host}/v1/streams/${encodeURIComponent(streamId)}/ws?token=${token}`;
}

/** True when the service answers at all (no token needed). */
export async function serviceReachable() {
  try {
    return (await fetch("/healthz", { cache: "no-store" })).ok;
  } catch {
    return false;
  }
}
