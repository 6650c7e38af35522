// The history of this stream's questions, each answer filled in as its deltas arrive.

import { describeRecall, recallTimeline } from "./recall.js";

const ms = (x) => (x == null ? "–" : `${Math.round(x)} ms`);

export class QuestionLog {
  #items = new Map();

  /**
   * @param {HTMLOListElement} list  an aria-live region: answers are read out once complete
   * @param {(id: string) => void} onCancel
   */
  constructor(list, onCancel) {
    this.list = list;
    this.onCancel = onCancel;
    this.#updateBusy();
  }

  /** @param {{mode: string, minutes: number} | null} recall  what the question asked to recall */
  add(id, text, recall = null) {
    const item = document.createElement("li");
    item.className = "qa";
    item.dataset.questionId = id;
    item.dataset.status = "streaming";
    item.dataset.deltas = "0";
    const question = document.createElement("p");
    question.className = "question";
    question.textContent = text;
    const answer = document.createElement("p");
    answer.className = "answer";
    const meta = document.createElement("p");
    meta.className = "meta";
    meta.textContent = "Answering…";
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.className = "secondary small";
    cancel.textContent = "Cancel";
    cancel.setAttribute("aria-label", `Cancel the answer to: ${text}`);
    cancel.addEventListener("click", () => this.onCancel(id));
    meta.append(" ", cancel);
    item.append(question, answer, meta);
    this.list.prepend(item); // newest first: the answer being written stays in view
    this.#items.set(id, { item, answer, meta, recall });
    this.#updateBusy();
  }

  delta(message) {
    const entry = this.#items.get(message.id);
    if (!entry) return;
    entry.answer.textContent += message.text;
    entry.item.dataset.deltas = String(Number(entry.item.dataset.deltas) + 1);
  }

  /** @param {number} streamSeconds  how far the stream has come (the recall timeline's end) */
  done(message, streamSeconds = 0) {
    const entry = this.#finish(message.id, message.stats.finish_reason === "cancelled" ? "cancelled" : "done");
    if (!entry) return;
    const { stats } = message;
    entry.answer.textContent = message.text; // the full text is authoritative
    entry.meta.textContent =
      `${stats.generated_tokens} tokens · first delta ${ms(stats.time_to_first_delta_ms)} · ` +
      `total ${ms(stats.total_ms)} · ${stats.finish_reason} · ${stats.context_tokens} context tokens`;
    if (message.recall && entry.recall) {
      const note = document.createElement("p");
      note.className = "meta recall-note";
      note.textContent = describeRecall(message.recall, entry.recall.mode, entry.recall.minutes);
      entry.item.append(note);
      if (message.recall.mode !== "recent") entry.item.append(recallTimeline(message.recall.spans, streamSeconds));
    }
  }

  fail(id, text) {
    const entry = this.#finish(id, "error");
    if (entry) entry.meta.textContent = text;
  }

  /** The connection dropped: the service cancels answers nobody reads. */
  interruptAll(text) {
    for (const id of [...this.#items.keys()]) this.fail(id, text);
  }

  #finish(id, status) {
    const entry = this.#items.get(id);
    if (!entry) return null;
    this.#items.delete(id);
    entry.item.dataset.status = status;
    this.#updateBusy();
    return entry;
  }

  /** Busy while any answer streams: a screen reader waits for it instead of reading every delta. */
  #updateBusy() {
    this.list.setAttribute("aria-busy", String(this.#items.size > 0));
  }
}
