// The page's one visible state line, announced to screen readers as it changes.

/** States the pages use; CSS colours them and tests read `data-state`. */
export const STATES = [
  "signed-out",
  "ready",
  "connecting",
  "live",
  "reconnecting",
  "unreachable",
  "bad-token",
  "no-camera",
  "ended",
  "error",
];

const countdowns = new WeakMap(); // state line → the timer of its running countdown

/**
 * @param {HTMLElement} element  a role="status" element
 * @param {string} state  one of STATES
 * @param {string} text  what the user reads
 */
export function showState(element, state, text) {
  if (!STATES.includes(state)) throw new Error(`unknown state ${state}`);
  clearInterval(countdowns.get(element));
  countdowns.delete(element);
  // the same words again would be read out again (the dashboard refreshes every second)
  if (element.dataset.state === state && element.textContent === text) return;
  element.dataset.state = state;
  element.textContent = text;
}

/**
 * `text`, then "Retrying in N s…" counting down to `retryAt` (a performance.now() time).
 * Screen readers hear the first count only: one read out every second would drown the page.
 */
export function showCountdown(element, state, text, retryAt) {
  showState(element, state, text);
  const secondsLeft = () => Math.max(0, Math.ceil((retryAt - performance.now()) / 1000));
  const spoken = document.createElement("span");
  spoken.className = "visually-hidden";
  spoken.textContent = ` Retrying in ${secondsLeft()} s.`;
  const shown = document.createElement("span");
  shown.setAttribute("aria-hidden", "true");
  const tick = () => {
    const left = secondsLeft();
    shown.textContent = left > 0 ? ` Retrying in ${left} s…` : " Retrying now…";
  };
  tick();
  element.append(spoken, shown);
  countdowns.set(element, setInterval(tick, 1000));
}
