// jobboard console: draws each page from the JSON API and redraws it when a
// server-sent event names something it shows. No framework, nothing fetched
// from elsewhere. Text goes in with textContent only (never as HTML).
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]').content;
const readOnly = document.querySelector('meta[name="read-only"]').content === "yes";
const $ = (selector) => document.querySelector(selector);

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Replace a node's children, leaving out null and undefined.
function fill(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined));
}

async function getJSON(path) {
  const response = await fetch(path, {headers: {Accept: "application/json"}});
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

async function postJSON(path, document_) {
  const response = await fetch(path, {
    method: "POST",
    headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
    body: JSON.stringify(document_ || {}),
  });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

// -- formatting ---------------------------------------------------------------

function span(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  seconds = Math.max(0, seconds);
  if (seconds < 1) return `${(seconds * 1000).toFixed(0)}ms`;
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) {
    if (seconds >= size) return `${(seconds / size).toFixed(1)}${unit}`;
  }
  return `${seconds.toFixed(1)}s`;
}
const ago = (epoch) => (epoch ? `${span(Date.now() / 1000 - epoch)} ago` : "-");
const stamp = (epoch) => (epoch ? new Date(epoch * 1000).toLocaleString() : "-");
const percent = (p) => (typeof p === "number" ? `${Math.round(p * 100)}%` : "-");
const short = (uuid) => uuid.slice(0, 8);
const stateBadge = (state) => h("span", {class: `state s-${state}`}, state);
const jobLink = (uuid) => h("a", {href: `/jobs/${uuid}`, title: uuid}, h("code", {}, short(uuid)));
const show = (value) => (typeof value === "string" ? value : JSON.stringify(value));

function flash(message, isError) {
  const node = $("#flash");
  node.textContent = message;
  node.className = isError ? "error" : "ok";
  node.hidden = false;
}

// -- live updates ---------------------------------------------------------------

let source = null;
let sourceKey = "";

function follow(jobIds, logbook, onChange) {
  const key = JSON.stringify([jobIds, logbook]);
  if (source && key === sourceKey) return;
  if (source) source.close();
  sourceKey = key;
  const query = new URLSearchParams();
  for (const id of jobIds) query.append("job", id);
  if (logbook) query.set("logbook", "1");
  source = new EventSource(`/api/events?${query}`);
  const light = $("#live");
  let opened = false;
  source.onopen = () => {
    light.textContent = "● live";
    light.className = "live on";
    if (opened) onChange(["reconnected"]);   // changes while the stream was down
    opened = true;
  };
  source.onerror = () => { light.textContent = "○ reconnecting"; light.className = "live"; };
  source.addEventListener("change", (event) => onChange(JSON.parse(event.data).topics));
}

// One redraw at a time; a change during a redraw asks for one more.
function redrawer(draw) {
  let running = false;
  let again = false;
  return async function redraw() {
    if (running) { again = true; return; }
    running = true;
    try {
      do { again = false; await draw(); } while (again);
    } catch (error) {
      flash(error.message, true);
    } finally {
      running = false;
    }
  };
}

// -- actions --------------------------------------------------------------------

const VERBS = {
  transfer: "Transfer the claim of", abandon: "Abandon (release the claim of)",
  cancel: "Cancel", retry: "Retry (run a new attempt of)", trash: "Trash (delete)",
  suspend: "Suspend (pause at the next task boundary)", resume: "Resume",
};

async function confirmAction(action, uuid, name, holder) {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = `${VERBS[action]} job ${short(uuid)} (${name})?`;
  const select = $("#confirm-to");
  select.replaceChildren();
  $("#confirm-to-label").hidden = action !== "transfer";
  if (action === "transfer") {
    const {conductors} = await getJSON("/api/conductors");
    for (const c of conductors) {
      if (c.name !== holder) select.append(h("option", {value: c.name}, c.name));
    }
    if (!select.options.length) { flash("no other live conductor to transfer to", true); return null; }
  }
  dialog.returnValue = "";
  dialog.showModal();
  await new Promise((resolve) => dialog.addEventListener("close", resolve, {once: true}));
  if (dialog.returnValue !== "ok") return null;
  return action === "transfer" ? {to: select.value} : {};
}

async function act(action, uuid, name, holder, after) {
  const body = await confirmAction(action, uuid, name, holder);
  if (body === null) return;
  try {
    const result = await postJSON(`/api/jobs/${uuid}/${action}`, body);
    flash(result.message, false);
  } catch (error) {
    flash(error.message, true);
  }
  await after();
}

// -- the jobs page ------------------------------------------------------------------

const COUNTED = ["UNCLAIMED", "CLAIMED", "FINISHED", "DEAD"];

async function jobsPage() {
  const params = new URLSearchParams(location.search);
  const redraw = redrawer(async () => {
    const [counts, page] = await Promise.all([
      getJSON("/api/counts"), getJSON(`/api/jobs?${params}`)]);
    fill($("#counts"), 
      ...COUNTED.map((state) => {
        const link = state === "FINISHED" ? null : `/jobs?state=${state}`;
        const label = state === "FINISHED" ? "COMPLETE/FAILED/CANCELLED" : state;
        return h(link ? "a" : "span", {class: `count s-${state}`, href: link, "data-state": state},
                 h("b", {}, counts[state]), ` ${label}`);
      }),
      h("span", {class: "count"}, h("b", {}, counts.total), " total"),
      counts.delayed ? h("span", {class: "count"}, `(${counts.delayed} delayed)`) : null);
    const now = Date.now() / 1000;
    fill($("#jobs tbody"), ...page.jobs.map((job) => h("tr", {"data-job": job.uuid},
      h("td", {}, jobLink(job.uuid)), h("td", {}, job.name), h("td", {}, stateBadge(job.state)),
      h("td", {}, job.queue || "-"), h("td", {class: "num"}, job.priority),
      h("td", {class: "num"}, job.attempt), h("td", {class: "num"}, job.claims),
      h("td", {}, job.owner || "-"), h("td", {}, h("code", {}, job.factory)),
      h("td", {}, span(now - job.created_at)))));
    if (!page.jobs.length) {
      $("#jobs tbody").append(h("tr", {}, h("td", {colspan: 10, class: "empty"}, "no job matches")));
    }
    const pager = [];
    if (params.get("cursor")) {
      const first = new URLSearchParams(params); first.delete("cursor");
      pager.push(h("a", {href: `/jobs?${first}`}, "⇤ first page"), " ");
    }
    if (page.next_cursor) {
      const next = new URLSearchParams(params); next.set("cursor", page.next_cursor);
      pager.push(h("a", {href: `/jobs?${next}`, id: "next-page"}, "next page →"));
    }
    pager.push(h("span", {class: "muted"}, ` ${page.order}; ${page.scanned} records read` +
      (page.partial ? " (stopped at the read budget: more may match further on)" : "")));
    fill($("#pager"), ...pager);
    follow(page.jobs.map((job) => job.uuid), false,
           (topics) => { if (topics.length) redraw(); });
  });
  await redraw();
}

// -- the job page ---------------------------------------------------------------------

function failureBlock(label, failure, open = true) {
  if (!failure) return null;
  return h("details", {class: "failure", open},
    h("summary", {}, `${label}: ${failure.exc_type}: ${failure.message}`),
    failure.traceback ? h("pre", {}, failure.traceback) : null);
}

function outcomeBlock(outcome) {
  if (!outcome) return "-";
  return h("div", {class: "outcome"},
    outcome.flow_state ? h("div", {}, "flow ", stateBadge(outcome.flow_state)) : null,
    outcome.reason ? h("div", {}, `reason: ${outcome.reason}`) : null,
    outcome.results && Object.keys(outcome.results).length
      ? h("div", {}, "results: ", h("code", {}, show(outcome.results))) : null,
    failureBlock("failure", outcome.failure, false));
}

function attemptBlock(attempt, current) {
  const now = Date.now() / 1000;
  const rows = attempt.tasks.map((t) => {
    const running = t.state === "RUNNING" || t.state === "REVERTING";
    const took = t.duration !== null ? span(t.duration)
      : (running && t.started_at ? `${span(now - t.started_at)} so far` : "-");
    return [
      h("tr", {class: `task s-${t.state}`, "data-task": t.name},
        h("td", {}, t.name), h("td", {}, t.kind), h("td", {}, stateBadge(t.state)),
        h("td", {class: "num"}, t.attempts), h("td", {}, stamp(t.started_at)), h("td", {}, took),
        h("td", {}, percent(t.progress)), h("td", {}, ago(t.heartbeat_at)), h("td", {}, t.note || ""),
        h("td", {}, t.result === null || t.result === undefined ? "" : h("code", {}, show(t.result)))),
      t.failure || t.revert_failure ? h("tr", {class: "failure-row"}, h("td", {colspan: 10},
        failureBlock("failure", t.failure), failureBlock("revert failure", t.revert_failure))) : null,
    ];
  });
  return h("details", {class: "attempt", open: current, "data-attempt": attempt.attempt},
    h("summary", {}, `attempt ${attempt.attempt}: ${attempt.name} `, stateBadge(attempt.state),
      h("span", {class: "muted"}, ` started ${stamp(attempt.created_at)}, updated ${ago(attempt.updated_at)}`)),
    h("table", {class: "grid timeline"},
      h("thead", {}, h("tr", {}, ...["task", "kind", "state", "attempts", "started", "duration",
        "progress", "heartbeat", "note", "result"].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows)));
}

async function jobPage() {
  const jobId = $("#job").dataset.jobId;
  const redraw = redrawer(async () => {
    const job = await getJSON(`/api/jobs/${encodeURIComponent(jobId)}`);
    $("#job-uuid").textContent = job.uuid;
    fill($("#job-state"), stateBadge(job.state),
      job.holder ? ` held by ${job.holder}` : "",
      job.cancel_requested ? " (cancel requested)" : "");
    if (!readOnly) {
      fill($("#job-actions"), ...Object.entries(job.actions).map(([action, why]) =>
        h("button", {type: "button", "data-action": action, disabled: why !== null,
                     title: why || `${action} this job`,
                     onclick: () => act(action, job.uuid, job.name, job.holder, redraw)}, action)));
    }
    const fields = [["name", job.name], ["factory", job.factory], ["queue", job.queue || "-"],
      ["priority", job.priority], ["attempt", job.attempt], ["claims", job.claims],
      ["deaths", job.deaths], ["owner", job.owner || "-"], ["posted", stamp(job.created_at)],
      ["due", job.not_before ? stamp(job.not_before) : "-"], ["key", job.key || "-"],
      ["args", show(job.args)], ["store", show(job.store)], ["details", show(job.details)],
      ["outcome", outcomeBlock(job.outcome)]];
    fill($("#job-record"), ...fields.flatMap(([k, v]) =>
      [h("dt", {}, k), h("dd", {}, k === "factory" ? h("code", {}, v) : v)]));
    fill($("#job-history"), ...job.history.map((e) =>
      h("li", {}, h("time", {}, stamp(e.at)), ` ${e.event}`, e.owner ? ` (${e.owner})` : "")));
    const book = job.logbook;
    const attempts = book.attempts.slice().reverse();
    fill($("#job-timeline"), 
      book.error ? h("p", {class: "error"}, `logbook not read: ${book.error}`) : null,
      attempts.length ? null : h("p", {class: "muted"}, "nothing in the logbook yet"),
      ...attempts.map((a, n) => attemptBlock(a, n === 0)));
    follow([job.uuid], !["COMPLETE", "FAILED", "CANCELLED", "DEAD"].includes(job.state),
           () => redraw());
  });
  await redraw();
}

// -- the claims page ---------------------------------------------------------------------

async function claimsPage() {
  const redraw = redrawer(async () => {
    const [held, live] = await Promise.all([getJSON("/api/claims"), getJSON("/api/conductors")]);
    const note = $("#claims-note");
    note.hidden = !held.logbook_error;
    note.textContent = held.logbook_error ? `tasks unknown: ${held.logbook_error}` : "";
    fill($("#claims tbody"), ...held.claims.map((c) => h("tr", {"data-job": c.job_id},
      h("td", {}, jobLink(c.job_id)), h("td", {}, c.name || "-"),
      h("td", {class: "owner"}, c.owner), h("td", {}, ago(c.since)), h("td", {class: "num"}, c.token),
      h("td", {}, c.task || "-"), h("td", {}, percent(c.progress)), h("td", {}, ago(c.heartbeat_at)),
      h("td", {}, c.note || ""),
      readOnly ? null : h("td", {},
        h("button", {type: "button", "data-action": "transfer",
                     onclick: () => act("transfer", c.job_id, c.name, c.owner, redraw)}, "transfer"),
        " ",
        h("button", {type: "button", "data-action": "abandon",
                     onclick: () => act("abandon", c.job_id, c.name, c.owner, redraw)}, "abandon")))));
    if (!held.claims.length) {
      $("#claims tbody").append(h("tr", {}, h("td", {colspan: 10, class: "empty"}, "no claims")));
    }
    fill($("#conductors tbody"), ...live.conductors.map((c) => h("tr", {"data-conductor": c.name},
      h("td", {}, c.name), h("td", {}, c.ready ? h("span", {class: "state s-COMPLETE"}, "READY")
                                          : h("span", {class: "state s-FAILED"}, "NOT READY")),
      h("td", {}, c.host || "-"), h("td", {class: "num"}, c.pid || "-"),
      h("td", {}, c.queues ? [].concat(c.queues).join(", ") : "default"),
      h("td", {class: "num"}, `${c.slots_in_use}/${c.concurrency || "?"}`),
      h("td", {}, span(c.started_at ? Date.now() / 1000 - c.started_at : null)),
      h("td", {}, c.version || "-"), h("td", {}, c.reason || ""))));
    follow([], false, () => redraw());
  });
  await redraw();
}

const PAGES = {jobs: jobsPage, job: jobPage, claims: claimsPage};
document.addEventListener("DOMContentLoaded", () => {
  const run = PAGES[document.body.dataset.page];
  if (run) run();
  else $("#live").hidden = true;
});
