// One stream on the dashboard: its state, stats, a live plot of dropped chunks, a remove button.

import { drawSharePlot } from "./plot.js";
import { describePruning, renderStats } from "./stats.js";

const CARD_STATS = [
  "chunks_received",
  "chunks_dropped_redundant",
  "chunks_encoder_skipped",
  "chunks_shed",
  "compression",
  "queue_depth",
  "real_time_factor",
  "questions_answered",
  "answer_latency",
  "reconnects",
];
const RATE_WINDOW_S = 10; // each plotted share covers this much of the past
const PLOT_SPAN_S = 120;
const HISTORY_S = PLOT_SPAN_S + RATE_WINDOW_S;
const LINES = {
  redundant: "#e69f00",
  skipped: "#56b4e9",
  shed: "#f87171",
};

export class StreamCard {
  #samples = [];

  /**
   * @param {object} stream  a StreamInfo
   * @param {(card: StreamCard) => void} onRemove
   */
  constructor(stream, onRemove) {
    this.id = stream.id;
    this.element = document.createElement("li");
    this.element.className = "panel stream-card";
    this.element.dataset.streamId = stream.id;
    const titleId = `stream-${stream.id}-title`;
    this.element.setAttribute("aria-labelledby", titleId);
    this.element.innerHTML = `
      <header>
        <h3 id="${titleId}"></h3>
        <span class="badges"><span class="badge stream-kind"></span> <span class="badge stream-state"></span></span>
      </header>
      <p class="stream-id"></p>
      <p class="pruning"></p>
      <p class="error" hidden></p>
      <p class="last-chunk"></p>
      <dl class="stats"></dl>
      <figure>
        <canvas role="img"></canvas>
        <figcaption>
          Chunks dropped, share over the last ${RATE_WINDOW_S} s, for the past ${PLOT_SPAN_S / 60} minutes:
          <span class="plot-key" data-line="redundant" aria-hidden="true"></span>redundant
          <span class="plot-key" data-line="skipped" aria-hidden="true"></span>of which skipped before encoding
          <span class="plot-key" data-line="shed" aria-hidden="true"></span>shed
        </figcaption>
      </figure>
      <div class="actions"><button type="button" class="danger small">Remove</button></div>`;
    // set through the DOM, not a style attribute: the page's content policy allows no inline styles
    for (const key of this.element.querySelectorAll(".plot-key")) key.style.background = LINES[key.dataset.line];
    this.title = this.element.querySelector("h3");
    this.kind = this.element.querySelector(".stream-kind");
    this.state = this.element.querySelector(".stream-state");
    this.error = this.element.querySelector(".error");
    this.stats = this.element.querySelector(".stats");
    this.lastChunk = this.element.querySelector(".last-chunk");
    this.plot = this.element.querySelector("canvas");
    this.removeButton = this.element.querySelector("button");
    // two streams may share a source: the id tells them apart
    this.name = `${stream.source} (id ${stream.id.slice(0, 8)})`;
    this.title.textContent = stream.source;
    this.kind.textContent = stream.kind;
    this.element.querySelector(".stream-id").textContent = `id ${stream.id}`;
    this.element.querySelector(".pruning").textContent = describePruning(stream.pruning);
    this.removeButton.setAttribute("aria-label", `Remove stream ${this.name}`);
    this.removeButton.addEventListener("click", () => onRemove(this));
  }

  /** @param {object} stream  the latest StreamInfo; @param {number} now  seconds */
  update(stream, now) {
    const { stats } = stream;
    this.state.textContent = stream.state;
    this.state.dataset.state = stream.state;
    this.element.dataset.state = stream.state;
    this.error.hidden = !stream.error;
    this.error.textContent = stream.error ?? "";
    renderStats(this.stats, CARD_STATS, stats);
    this.lastChunk.textContent = describeLastChunk(stats.last_chunk);
    this.lastChunk.dataset.skipped = String(stats.last_chunk?.encoder_skipped ?? false);
    this.#samples.push({
      t: now,
      received: stats.chunks_received,
      processed: stats.chunks_processed,
      redundant: stats.chunks_dropped_redundant,
      skipped: stats.chunks_encoder_skipped,
      shed: stats.chunks_shed,
    });
    while (this.#samples[0].t < now - HISTORY_S) this.#samples.shift();
    this.#draw(now);
  }

  #draw(now) {
    const redundant = [];
    const skipped = [];
    const shed = [];
    let start = 0;
    for (const sample of this.#samples) {
      while (sample.t - this.#samples[start].t > RATE_WINDOW_S) start += 1;
      const first = this.#samples[start];
      const processed = sample.processed - first.processed;
      redundant.push({ t: sample.t, value: share(sample.redundant - first.redundant, processed) });
      skipped.push({ t: sample.t, value: share(sample.skipped - first.skipped, processed) });
      shed.push({ t: sample.t, value: share(sample.shed - first.shed, sample.received - first.received) });
    }
    drawSharePlot(
      this.plot,
      [
        { colour: LINES.redundant, points: redundant },
        { colour: LINES.skipped, points: skipped },
        { colour: LINES.shed, points: shed },
      ],
      now,
      PLOT_SPAN_S,
    );
    const latest = (points) => `${Math.round(points.at(-1).value * 100)} %`;
    this.plot.setAttribute(
      "aria-label",
      `In the last ${RATE_WINDOW_S} s: ${latest(redundant)} of chunks dropped as redundant ` +
        `(${latest(skipped)} skipped before encoding), ${latest(shed)} shed.`,
    );
    this.plot.dataset.samples = String(this.#samples.length);
  }
}

/** What became of the stream's newest chunk, in one line. */
function describeLastChunk(chunk) {
  if (!chunk) return "No chunk processed yet.";
  let fate = `${chunk.video_tokens_kept} of ${chunk.video_tokens_in} video tokens kept`;
  if (chunk.encoder_skipped) fate = "skipped before encoding (scene unchanged), audio kept";
  else if (chunk.video_dropped) fate = "video dropped as redundant, audio kept";
  else if (!chunk.grid) fate = "no video, audio only";
  return `Last chunk (${chunk.index}): ${fate}.`;
}

function share(part, whole) {
  return whole > 0 ? Math.min(1, part / whole) : 0;
}
