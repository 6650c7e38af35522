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

/**
 * @param {HTMLElement} element  a role="status" element
 * @param {string} state  one of STATES
 * @param {string} text  what the user reads
 */
export function showState(element, state, text) {
  if (!STATES.includes(state)) throw new Error(`unknown state ${state}`);
  element.dataset.state = state;
  element.textContent = text;
}
