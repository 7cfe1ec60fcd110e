// The live pages' polling: every few seconds, fetch the server-rendered fragment named by the element's
// data-poll and either put it in place (the episode list) or append it (an episode's new calls, from the
// index in data-since on; the next index comes back in X-Next-Since). The HTML is the gym's own, escaped by
// its templates; this file only moves it.
"use strict";
(function () {
  const target = document.querySelector("[data-poll]");
  const status = document.getElementById("live-status");
  if (!target) return;
  const every = Number(target.dataset.every) || 2000;
  const say = (text) => { if (status) status.textContent = text; };
  async function tick() {
    const url = new URL(target.dataset.poll, window.location.href);
    if (target.dataset.since !== undefined) url.searchParams.set("since", target.dataset.since);
    try {
      const response = await fetch(url, { cache: "no-store", credentials: "same-origin" });
      const body = await response.text();
      if (response.status === 200) {
        if (target.dataset.mode === "append") {
          if (body.trim()) target.insertAdjacentHTML("beforeend", body);
          target.dataset.since = response.headers.get("X-Next-Since") || target.dataset.since;
        } else {
          target.innerHTML = body;
        }
        say("updated " + new Date().toLocaleTimeString());
      } else if (response.status === 401 || response.status === 404) {
        say(response.status === 401 ? "logged out: reload to log in" : "stopped: " + body);
        return;  // nothing more will come
      } else {
        say("the gym answered " + response.status + "; trying again");
      }
    } catch (error) {
      say("the gym did not answer; trying again");
    }
    window.setTimeout(tick, every);
  }
  window.setTimeout(tick, every);
})();
