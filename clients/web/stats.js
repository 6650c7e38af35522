// How a stream's stats (StreamStatsBody in service/protocol.py) read on both pages.

const whole = (n) => (n ?? 0).toLocaleString("en");
const percent = (x) => (x == null ? "–" : `${(x * 100).toFixed(1)} %`);
const factor = (x) => (x == null ? "–" : `${x.toFixed(2)}×`);
const millis = (x) => (x == null ? "–" : `${Math.round(x)} ms`);

/** Every stat either page shows: its label, how to read it from the stats, and a hint. */
export const STAT_FIELDS = {
  chunks_received: { label: "Chunks in", value: (s) => whole(s.chunks_received) },
  chunks_processed: { label: "Processed", value: (s) => whole(s.chunks_processed) },
  chunks_dropped_redundant: {
    label: "Dropped as redundant",
    value: (s) => whole(s.chunks_dropped_redundant),
    hint: "video so like the last kept chunk's that only its audio was kept",
  },
  chunks_encoder_skipped: {
    label: "Skipped before encoding",
    value: (s) => whole(s.chunks_encoder_skipped),
    hint: "of those dropped, found unchanged by the pixel pre-filter: the vision encoder never ran",
  },
  chunks_shed: {
    label: "Shed",
    value: (s) => whole(s.chunks_shed),
    hint: "never processed: the model fell behind real time",
  },
  compression: {
    label: "Compression",
    value: (s) => percent(s.compression),
    hint: "share of audio and video tokens pruned before the cache",
  },
  real_time_factor: {
    label: "Real-time factor",
    value: (s) => factor(s.real_time_factor),
    hint: "processing seconds per second of stream; below 1× keeps up",
  },
  queue_depth: {
    label: "Queue",
    value: (s) => whole(s.queue_depth),
    hint: "chunks waiting for the model",
  },
  kv_tokens: { label: "KV tokens", value: (s) => whole(s.kv_tokens) },
  chunks_offloaded: {
    label: "Chunks in memory",
    value: (s) => (s.memory?.enabled ? whole(s.memory.chunks_held) : "off"),
    hint: "older chunks kept in RAM or on disk for questions to recall (long memory)",
  },
  reconnects: {
    label: "Reconnects",
    value: (s) => whole(s.reconnects),
    hint: "times the source lost its camera and got it back",
  },
  questions_answered: { label: "Questions served", value: (s) => whole(s.questions_answered) },
  answer_latency: {
    label: "First answer delta (p50)",
    value: (s) => millis(s.answer_latency?.p50_ms),
  },
};

const REFERENCES = {
  a2v: "the A2V predictor",
  mean_audio: "the mean audio embedding",
  none: "nothing",
};

/**
 * One line on how a stream is pruned (PruningInfo in service/protocol.py), saying plainly when
 * ContextGuard runs without its A2V predictor.
 * @param {{method: string, drop_policy: string, semantic_reference: string}} pruning
 */
export function describePruning({ method, drop_policy: policy, semantic_reference: reference }) {
  if (method === "none") return "Pruning: off (every token kept).";
  const fallback = method === "contextguard" && reference === "mean_audio";
  const against = `video scored against ${REFERENCES[reference] ?? reference}`;
  return (
    `Pruning: ${method}, drop policy ${policy}; ${against}` +
    (fallback ? " (no A2V predictor configured: the weaker fallback)." : ".")
  );
}

/**
 * Fill a <dl> with the named stats; the elements are made once and then updated in place,
 * so a screen reader's position and the layout do not jump every tick.
 * @param {HTMLDListElement} list
 * @param {string[]} names  keys of STAT_FIELDS
 * @param {object} stats  a StreamStatsBody
 */
export function renderStats(list, names, stats) {
  for (const name of names) {
    const field = STAT_FIELDS[name];
    let value = list.querySelector(`dd[data-stat="${name}"]`);
    if (!value) {
      const wrapper = document.createElement("div");
      const term = document.createElement("dt");
      term.textContent = field.label;
      if (field.hint) term.title = field.hint;
      value = document.createElement("dd");
      value.dataset.stat = name;
      wrapper.append(term, value);
      list.append(wrapper);
    }
    value.textContent = field.value(stats);
  }
}
