// schedctl ui: follow a running job's output on its page. Without this script the page
// refreshes itself (noscript meta refresh) and still shows everything.
"use strict";
(function () {
  const out = document.getElementById("output");
  if (!out) return;
  const job = out.dataset.job;
  let next = Number(out.dataset.next) || 0;
  const state = out.dataset.state;
  let failures = 0;

  function append(stream, text) {
    const span = document.createElement("span");
    span.className = stream === "stderr" ? "stderr" : "stdout";
    span.textContent = text;  // text, never markup: output is whatever the job wrote
    const atBottom = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
    out.appendChild(span);
    if (atBottom) out.scrollTop = out.scrollHeight;
  }

  async function poll() {
    try {
      const reply = await fetch("/jobs/" + job + "/output?after=" + next,
                                {headers: {"Accept": "application/json"}});
      if (!reply.ok) throw new Error(String(reply.status));
      const body = await reply.json();
      for (const [stream, text] of body.chunks) append(stream, text);
      next = body.next;
      failures = 0;
      // A new state (final, or a retry) changes the attempts table: show the page anew.
      if (body.state !== state) { window.location.reload(); return; }
    } catch (err) {
      failures += 1;  // the console or the cluster is away for a moment: keep trying
    }
    window.setTimeout(poll, Math.min(1000 * (1 + failures), 10000));
  }
  window.setTimeout(poll, 500);
})();
