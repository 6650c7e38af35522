// Long memory on the webcam page: what a question recalls (the `recall` of question.ask) and a
// timeline of the spans an answer recalled (answer.done's `recall`).

/**
 * The `recall` value for the picker's state: "auto", "recent", or the last N minutes as a span
 * counting back from now (`{"from": -N*60}`: `to` left out means now).
 * @param {string} mode  "auto" | "minutes" | "recent"
 * @param {number} minutes
 */
export function recallValue(mode, minutes) {
  if (mode === "minutes") return { from: -Math.max(1, minutes) * 60 };
  return mode;
}

/** How a recall reads in a question's history entry. */
export function describeRecall(recall, mode, minutes) {
  if (!recall) return "";
  const chunks = recall.spans.reduce((n, span) => n + span.chunks, 0);
  const asked = mode === "minutes" ? `last ${minutes} min` : recall.mode;
  if (recall.mode === "recent") return "recent window only";
  return `${asked}: ${chunks} chunks (${recall.tokens} tokens) recalled in ${Math.round(recall.latency_ms)} ms`;
}

const clock = (iso) => new Date(iso).toLocaleTimeString();
const seconds = (s) => `${Math.floor(s / 60)}:${String(Math.floor(s % 60)).padStart(2, "0")}`;

/**
 * A bar for the stream so far (0 to `endS` stream seconds) with each recalled span marked; each
 * mark's title gives its stream seconds and wall-clock times.
 * @param {{from_s: number, to_s: number, from_wall: string, to_wall: string, chunks: number}[]} spans
 * @param {number} endS
 */
export function recallTimeline(spans, endS) {
  const bar = document.createElement("div");
  bar.className = "recall-timeline";
  bar.setAttribute("role", "img");
  const end = Math.max(endS, ...spans.map((span) => span.to_s), 1);
  const words = spans.map((span) => `${seconds(span.from_s)}–${seconds(span.to_s)}`);
  bar.setAttribute(
    "aria-label",
    spans.length ? `Recalled from the stream: ${words.join(", ")} of ${seconds(end)}` : "Nothing recalled",
  );
  for (const span of spans) {
    const mark = document.createElement("span");
    mark.className = "recall-span";
    mark.style.left = `${(100 * span.from_s) / end}%`;
    mark.style.width = `${Math.max(0.5, (100 * (span.to_s - span.from_s)) / end)}%`;
    mark.title = `${seconds(span.from_s)}–${seconds(span.to_s)} of the stream (${clock(span.from_wall)}–${clock(span.to_wall)}), ${span.chunks} chunks`;
    bar.append(mark);
  }
  return bar;
}
