// The token gate both pages share: ask for the bearer token once, keep it for this tab only.

import { ApiError, forgetToken, listStreams, saveToken, savedToken } from "./api.js";

export class TokenGate {
  /**
   * @param {object} parts
   * @param {HTMLFormElement} parts.form  holds #token-input and #token-message
   * @param {HTMLButtonElement} parts.changeButton  shows the form again
   * @param {(list: {streams: object[], viewer: object}) => void} parts.onAccepted  the token
   *   works; the stream list it sees
   * @param {(error: Error) => void} parts.onFailed  refused (ApiError) or unreachable
   */
  constructor({ form, changeButton, onAccepted, onFailed }) {
    this.form = form;
    this.input = form.querySelector("input");
    this.message = form.querySelector(".message");
    this.changeButton = changeButton;
    this.onAccepted = onAccepted;
    this.onFailed = onFailed;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      saveToken(this.input.value.trim());
      this.check();
    });
    changeButton.addEventListener("click", () => this.ask(""));
  }

  /** Check the saved token, or ask for one when there is none. */
  start() {
    if (savedToken()) this.check();
    else this.ask("");
  }

  /** Any authenticated call proves the token; listing streams is the cheapest. */
  async check() {
    try {
      const list = await listStreams();
      this.form.hidden = true;
      this.changeButton.hidden = false;
      this.onAccepted(list);
    } catch (error) {
      if (error instanceof ApiError && error.isBadToken) this.refuse(error);
      this.onFailed(error);
    }
  }

  /** The service refused the token: forget it and ask again, saying why. */
  refuse(error) {
    forgetToken();
    this.ask(`The service refused this token (${error.code}): ${error.message}`);
  }

  ask(message) {
    this.message.textContent = message;
    this.form.hidden = false;
    this.changeButton.hidden = true;
    this.input.value = "";
    this.input.focus();
  }
}
