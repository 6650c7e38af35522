// The retention overlay: the latest chunk's frames with the video tokens that entered the cache.
//
// Token layout (service: ChunkOverlay, from the backbone's merged-token grid): `grid` is
// (F, H, W) with F temporal patches per chunk (two frames each), H×W tokens per patch, each
// token covering a square of the `resized_hw` frame the model saw (28 px for Qwen2.5-Omni's
// 14 px patches merged 2×2, 32 px for Qwen3-Omni's 16 px ones): cells are sized from the grid,
// never assumed. Kept tokens are flat indices j = f·H·W + h·W + w, listed by the branch that
// kept them.

const HISTORY_SECONDS = 30; // how far the service may lag before a chunk's frames are forgotten
const SNAPSHOT_WIDTH = 320;
const PANEL_WIDTH = 320;
const PANEL_GAP = 12;
const LABEL_HEIGHT = 26;
const NARROW_WIDTH = 480; // CSS pixels under which the patches stack
const DATA_KEYS = ["chunk", "grid", "semantic", "spatial", "highlighted", "dropped", "skipped", "audioMissing"];

const COLOURS = {
  semantic: "#e69f00", // Okabe–Ito orange and sky blue: apart for every common colour vision
  spatial: "#56b4e9",
  dim: "rgba(8, 12, 24, 0.7)",
  grid: "rgba(255, 255, 255, 0.22)",
  label: "#e2e8f0",
};

/**
 * Snapshots of the local preview, timed from when the stream started. The service keeps no
 * pictures, so the overlay shows the local frame nearest each chunk's time: the same camera,
 * within a snapshot period and the network's delay of what the model saw.
 */
export class FrameHistory {
  #frames = [];
  #timer = null;
  #origin = 0;
  #limit = 0;

  constructor(video) {
    this.video = video;
  }

  /** Start a new history, sampling the preview as often as the service samples the stream. */
  start(fps) {
    this.stop();
    this.#frames = [];
    this.#origin = performance.now();
    this.#limit = Math.ceil(HISTORY_SECONDS * fps);
    this.#timer = setInterval(() => this.#snapshot(), 1000 / fps);
    this.#snapshot();
  }

  /** Stop taking snapshots; the ones taken stay for the overlay on show. */
  stop() {
    clearInterval(this.#timer);
    this.#timer = null;
  }

  /** The snapshot nearest to `seconds` after the start, or null before the first one. */
  nearest(seconds) {
    let best = null;
    for (const frame of this.#frames) {
      if (!best || Math.abs(frame.seconds - seconds) < Math.abs(best.seconds - seconds)) best = frame;
    }
    return best?.canvas ?? null;
  }

  #snapshot() {
    const { video } = this;
    if (video.readyState < HTMLMediaElement.HAVE_CURRENT_DATA || !video.videoWidth) return;
    // reuse the oldest canvas once the history is full
    const canvas = this.#frames.length >= this.#limit ? this.#frames.shift().canvas : document.createElement("canvas");
    canvas.width = SNAPSHOT_WIDTH;
    canvas.height = Math.round((SNAPSHOT_WIDTH * video.videoHeight) / video.videoWidth);
    canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
    this.#frames.push({ seconds: (performance.now() - this.#origin) / 1000, canvas });
  }
}

/**
 * Draw `chunk` (a ChunkOverlay) on `canvas`, one panel per temporal patch, and describe it in
 * the canvas's data attributes (for tests and tools) and aria-label.
 * @param {HTMLCanvasElement} canvas
 * @param {object} chunk
 * @param {FrameHistory} frames
 * @param {number} chunkSeconds  the chunk's length (StreamInfo.chunk.seconds)
 * @returns {string} a one-line description for people
 */
export function drawOverlay(canvas, chunk, frames, chunkSeconds) {
  const [patches, rows, columns] = chunk.grid ?? [1, 0, 0];
  const [resizedH, resizedW] = chunk.resized_hw ?? [3, 4];
  const panel = { width: PANEL_WIDTH, height: Math.round((PANEL_WIDTH * resizedH) / resizedW) };
  // side by side where there is room, one under the other on a phone
  const across = canvas.clientWidth && canvas.clientWidth < NARROW_WIDTH ? 1 : patches;
  const down = Math.ceil(patches / across);
  const rowHeight = panel.height + LABEL_HEIGHT;
  canvas.width = across * panel.width + (across - 1) * PANEL_GAP;
  canvas.height = down * rowHeight + (down - 1) * PANEL_GAP;
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  const semantic = new Set(chunk.semantic);
  const spatial = new Set(chunk.spatial);
  const patchSeconds = chunkSeconds / patches;
  let highlighted = 0;

  for (let f = 0; f < patches; f++) {
    const x = (f % across) * (panel.width + PANEL_GAP);
    const y = Math.floor(f / across) * (rowHeight + PANEL_GAP);
    const from = chunk.start + f * patchSeconds;
    drawFrame(context, frames.nearest(from + patchSeconds / 2), x, y, panel);
    if (chunk.grid) {
      const cell = { width: panel.width / columns, height: panel.height / rows };
      for (let h = 0; h < rows; h++) {
        for (let w = 0; w < columns; w++) {
          const index = f * rows * columns + h * columns + w;
          const kept = {
            semantic: !chunk.video_dropped && semantic.has(index),
            spatial: !chunk.video_dropped && spatial.has(index),
          };
          if (kept.semantic || kept.spatial) highlighted += 1;
          drawCell(context, x + w * cell.width, y + h * cell.height, cell, kept);
        }
      }
    }
    if (chunk.encoder_skipped) drawBanner(context, "Skipped before encoding · scene unchanged · audio kept", x, y, panel);
    else if (chunk.video_dropped) drawBanner(context, "Video dropped as redundant · audio kept", x, y, panel);
    else if (!chunk.grid) drawBanner(context, "No video in this chunk · audio only", x, y, panel);
    context.fillStyle = COLOURS.label;
    context.font = "15px system-ui, sans-serif";
    context.textBaseline = "middle";
    const label = `${from.toFixed(1)}–${(from + patchSeconds).toFixed(1)} s`;
    context.fillText(label, x + 2, y + panel.height + LABEL_HEIGHT / 2);
  }

  const description = describe(chunk, chunkSeconds);
  Object.assign(canvas.dataset, {
    chunk: String(chunk.index),
    grid: chunk.grid ? chunk.grid.join("x") : "",
    semantic: String(semantic.size),
    spatial: String(spatial.size),
    highlighted: String(highlighted),
    dropped: String(chunk.video_dropped),
    skipped: String(chunk.encoder_skipped),
    audioMissing: String(chunk.audio_missing),
  });
  canvas.setAttribute("aria-label", `Retention overlay. ${description}`);
  return description;
}

/**
 * Blank `canvas` for a new stream, as the page served it: its size (resizing clears it), no
 * data attributes, and its "no chunk" label for screen readers.
 * @param {{width: number, height: number, label: string}} served
 */
export function clearOverlay(canvas, served) {
  canvas.width = served.width;
  canvas.height = served.height;
  for (const key of DATA_KEYS) delete canvas.dataset[key];
  canvas.setAttribute("aria-label", served.label);
}

function drawFrame(context, frame, x, y, panel) {
  if (frame) {
    context.drawImage(frame, x, y, panel.width, panel.height);
    return;
  }
  context.fillStyle = "#1e293b";
  context.fillRect(x, y, panel.width, panel.height);
}

function drawCell(context, x, y, cell, kept) {
  if (kept.semantic || kept.spatial) {
    // a light tint keeps the picture readable; the frame says which branch kept it
    context.fillStyle = kept.semantic ? COLOURS.semantic : COLOURS.spatial;
    context.globalAlpha = 0.2;
    context.fillRect(x, y, cell.width, cell.height);
    context.globalAlpha = 1;
    // a token both branches kept: semantic tint, spatial frame
    context.strokeStyle = kept.spatial ? COLOURS.spatial : COLOURS.semantic;
    context.lineWidth = 3;
    context.strokeRect(x + 1.5, y + 1.5, cell.width - 3, cell.height - 3);
    return;
  }
  context.fillStyle = COLOURS.dim;
  context.fillRect(x, y, cell.width, cell.height);
  context.strokeStyle = COLOURS.grid;
  context.lineWidth = 1;
  context.strokeRect(x + 0.5, y + 0.5, cell.width - 1, cell.height - 1);
}

function drawBanner(context, text, x, y, panel) {
  context.font = "bold 15px system-ui, sans-serif";
  const boxWidth = Math.min(panel.width - 16, context.measureText(text).width + 24);
  const centre = { x: x + panel.width / 2, y: y + panel.height / 2 };
  context.fillStyle = "rgba(15, 23, 42, 0.92)";
  context.fillRect(centre.x - boxWidth / 2, centre.y - 18, boxWidth, 36);
  context.strokeStyle = COLOURS.label;
  context.lineWidth = 1;
  context.strokeRect(centre.x - boxWidth / 2 + 0.5, centre.y - 17.5, boxWidth - 1, 35);
  context.fillStyle = COLOURS.label;
  context.textAlign = "center";
  context.textBaseline = "middle";
  context.fillText(text, centre.x, centre.y, boxWidth - 16);
  context.textAlign = "start";
}

function describe(chunk, chunkSeconds) {
  const span = `Chunk ${chunk.index} (${chunk.start.toFixed(1)}–${(chunk.start + chunkSeconds).toFixed(1)} s)`;
  const audio = chunk.audio_missing ? " No audio for part of this chunk: silence stands in." : "";
  if (!chunk.grid) return `${span}: no video, ${chunk.audio_tokens} audio tokens.${audio}`;
  const similarity = chunk.similarity == null ? "" : ` (cosine ${chunk.similarity.toFixed(3)} with the last kept chunk)`;
  if (chunk.encoder_skipped) {
    return (
      `${span}: video dropped as redundant, skipped before encoding (the pixel pre-filter found the scene ` +
      `unchanged, so the vision encoder never ran); its ${chunk.audio_tokens} audio tokens were kept.${audio}`
    );
  }
  if (chunk.video_dropped) {
    return `${span}: video dropped as redundant${similarity}; its ${chunk.audio_tokens} audio tokens were kept.${audio}`;
  }
  const evicted = chunk.previous_video_evicted ? " The previous chunk's video was evicted as redundant." : "";
  return (
    `${span}: ${chunk.video_tokens_kept} of ${chunk.video_tokens_in} video tokens kept — ` +
    `${chunk.semantic.length} semantic, ${chunk.spatial.length} spatial — ` +
    `plus ${chunk.audio_tokens} audio tokens.${evicted}${audio}`
  );
}
