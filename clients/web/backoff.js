// Waits between tries at something that is down: doubling up to a cap, so a blip is retried
// at once and a long outage is not hammered.

const FIRST_MS = 500;
const MAX_MS = 30_000;
const JITTER = 0.2; // ±20 %: pages that lost the service together do not all retry in step

export class Backoff {
  #attempts = 0;

  /** The tries made since the last reset, counting the one `next()` just scheduled. */
  get attempts() {
    return this.#attempts;
  }

  /** The wait before the next try, in milliseconds. */
  next() {
    const base = Math.min(MAX_MS, FIRST_MS * 2 ** this.#attempts);
    this.#attempts += 1;
    return Math.round(base * (1 - JITTER + 2 * JITTER * Math.random()));
  }

  /** It worked: the next outage starts from the first wait again. */
  reset() {
    this.#attempts = 0;
  }
}
