// The browser side of WebRTC ingest: camera and microphone in, one send-only peer to the service.

import { sendWebrtcOffer } from "./api.js";

// Host candidates on a LAN gather in milliseconds; past this, send whatever was gathered.
const ICE_GATHERING_LIMIT_MS = 5000;

/** Camera and microphone; rejects with the browser's DOMException (NotAllowedError, ...). */
export function openCamera() {
  return navigator.mediaDevices.getUserMedia({
    video: { width: { ideal: 640 }, height: { ideal: 480 } },
    audio: true,
  });
}

function iceGatheringDone(peer) {
  if (peer.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(finish, ICE_GATHERING_LIMIT_MS);
    function finish() {
      clearTimeout(timer);
      peer.removeEventListener("icegatheringstatechange", changed);
      resolve();
    }
    function changed() {
      if (peer.iceGatheringState === "complete") finish();
    }
    peer.addEventListener("icegatheringstatechange", changed);
  });
}

/**
 * Offer `media` to the service and start sending it.
 * The service does not take trickled candidates, so the offer goes out once gathering is done.
 * @returns {Promise<{peer: RTCPeerConnection, stream: object, origin: string}>} the stream is a
 *   StreamInfo; `origin` the worker's that took it (placement may pick another than this page's)
 */
export async function connectPeer(media) {
  const peer = new RTCPeerConnection();
  try {
    for (const track of media.getTracks()) {
      peer.addTransceiver(track, { direction: "sendonly", streams: [media] });
    }
    await peer.setLocalDescription(await peer.createOffer());
    await iceGatheringDone(peer);
    const { answer, origin } = await sendWebrtcOffer(peer.localDescription);
    await peer.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
    return { peer, stream: answer.stream ?? { id: answer.stream_id }, origin };
  } catch (error) {
    peer.close();
    throw error;
  }
}
