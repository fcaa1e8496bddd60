// The distraft dashboard: draws the cluster view that the node which served this page
// gathers from every member (GET /ui/api/events, server-sent events; polling
// /ui/api/cluster where events do not work). No framework, no other origin; every
// value from the cluster is set as text, never parsed as HTML.
"use strict";

const POLL_EVERY_MS = 1000;
const RATE_WINDOW = 120; // samples kept for the sparklines
const PALETTE = ["#f2c14e", "#5aa9e6", "#57c785", "#c678dd", "#f08a4b", "#56b6c2", "#e06c75"];

const state = {
  previous: null, // the last view, for rates
  rates: { writes: [], reads: [], commits: [] },
  colors: new Map(),
  cards: new Map(),
  // Leader changes this page saw itself: the serving node's own timeline stops while
  // that node is stopped, and this one does not.
  observed: [],
  polling: null,
};

function $(id) {
  return document.getElementById(id);
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function token() {
  return $("token").value.trim();
}

function headers(extra = {}) {
  const all = { ...extra };
  if (token()) all.Authorization = "Bearer " + token();
  return all;
}

function colorOf(name) {
  if (!name) return "#3a4450";
  if (!state.colors.has(name)) state.colors.set(name, PALETTE[state.colors.size % PALETTE.length]);
  return state.colors.get(name);
}

function ms(value) {
  if (value === null || value === undefined) return "–";
  if (value < 1000) return value + " ms";
  return (value / 1000).toFixed(1) + " s";
}

function clock(atMs) {
  return new Date(atMs).toLocaleTimeString();
}

// --- the connection ------------------------------------------------------------------

function setLink(kind, text) {
  const link = $("link");
  link.className = "link " + kind;
  link.textContent = text;
}

function connect() {
  if (!("EventSource" in window)) {
    startPolling();
    return;
  }
  const events = new EventSource("/ui/api/events");
  events.addEventListener("cluster", (event) => {
    setLink("live", "live");
    render(JSON.parse(event.data));
  });
  events.onerror = () => {
    // CLOSED: the node refused the stream (too many viewers): poll instead.
    // CONNECTING: the browser retries by itself.
    if (events.readyState === EventSource.CLOSED) {
      startPolling();
    } else {
      setLink("lost", "reconnecting…");
    }
  };
}

function startPolling() {
  if (state.polling) return;
  const poll = async () => {
    try {
      const answer = await fetch("/ui/api/cluster", { cache: "no-store" });
      render(await answer.json());
      setLink("polling", "polling");
    } catch (err) {
      setLink("lost", "no answer from this node");
    }
  };
  poll();
  state.polling = setInterval(poll, POLL_EVERY_MS);
}

// --- drawing -------------------------------------------------------------------------

function roleOf(member) {
  if (!member.reachable) return "unreachable";
  if (!member.status.up) return "stopped";
  // A learner receives the log but does not vote: it is never a candidate or leader.
  if (member.learner) return "learner";
  return member.status.state.toLowerCase();
}

function render(view) {
  const members = view.members || [];
  const statuses = members.filter((m) => m.reachable).map((m) => m.status);
  const leader = statuses.find((s) => s.is_leader && s.up);
  const term = Math.max(0, ...statuses.map((s) => s.term));
  const up = members.filter((m) => m.reachable && m.status.up).length;

  $("sum-leader").textContent = leader ? leader.id : "none";
  $("sum-leader").style.color = leader ? colorOf(leader.id) : "var(--down)";
  $("sum-term").textContent = term;
  $("sum-up").textContent = up + " / " + members.length;
  $("sum-commit").textContent = leader ? leader.commit_index : "–";
  $("sum-quorum").textContent = leader ? ms(leader.quorum_ack_ms) : "–";
  $("served-by").textContent = "as seen through " + view.served_by;

  const cards = $("cards");
  const boxes = members.map((member) => card(member));
  // Only re-attach when the members or their order changed.
  if (boxes.length !== cards.children.length || boxes.some((box, i) => cards.children[i] !== box)) {
    cards.replaceChildren(...boxes);
  }
  renderRates(view, leader);
  observe(view.at_ms, term, leader ? leader.id : "");
  renderTimeline(merge(view.timeline || [], state.observed), view.at_ms);
}

function fact(label, value) {
  return el("div", {}, el("span", { class: "label", text: label }), el("span", { class: "value", text: String(value) }));
}

// A card per member, made once and updated in place: the view is redrawn twice a
// second, and a button rebuilt under the pointer would swallow the click.
function cardOf(name) {
  if (state.cards.has(name)) return state.cards.get(name);
  const box = el("div", { class: "card", "data-member": name });
  const badge = el("span", { class: "badge" });
  const alarm = el("span", { class: "badge alarm" });
  const head = el("div", { class: "card-head" }, el("span", { class: "name", text: name }), el("span", {}, badge, alarm));
  const body = el("div");
  const stop = el("button", { type: "button", "data-action": "stop", text: "Stop" });
  const start = el("button", { type: "button", "data-action": "start", text: "Start" });
  const lead = el("button", { type: "button", "data-action": "lead", text: "Make leader" });
  const remove = el("button", { type: "button", "data-action": "remove", text: "Remove" });
  stop.addEventListener("click", () => act(name, "stop"));
  start.addEventListener("click", () => act(name, "start"));
  lead.addEventListener("click", () => act(name, "lead"));
  remove.addEventListener("click", () => removeMember(name));
  box.append(head, body, el("div", { class: "actions" }, stop, start, lead, remove));
  const card = { box, badge, alarm, body, stop, start, lead, remove };
  state.cards.set(name, card);
  return card;
}

function card(member) {
  const role = roleOf(member);
  const c = cardOf(member.name);
  c.box.className = "card " + role;
  c.box.setAttribute("data-role", role);
  c.badge.className = "badge " + role;
  c.badge.textContent = role;
  if (!member.reachable) {
    c.alarm.hidden = true;
    c.body.replaceChildren(el("div", { class: "error", text: member.error || "unreachable" }));
    c.stop.disabled = true;
    c.start.disabled = true;
    c.lead.disabled = true;
    return c.box;
  }
  const s = member.status;
  c.alarm.hidden = !s.alarm;
  c.alarm.textContent = s.alarm || "";
  const parts = [
    el(
      "div",
      { class: "facts" },
      fact("term", s.term),
      fact("commit", s.commit_index),
      fact("applied", s.last_applied),
      fact("last log", s.last_log_index),
      fact("keys", s.keys),
      fact("snapshot", s.snapshot_index),
    ),
    el("div", { class: "digest", text: "state " + s.state_digest + (s.leader && !s.is_leader ? "  ·  follows " + s.leader : "") }),
  ];
  if (s.is_leader && s.up) {
    c.box.classList.add("leader-wide");
    parts.push(followersTable(s));
  }
  c.body.replaceChildren(...parts);
  c.stop.disabled = !s.up;
  c.start.disabled = s.up;
  c.lead.disabled = !s.up || s.is_leader || member.learner;
  return c.box;
}

function followersTable(s) {
  const table = el("table", { class: "followers" });
  table.append(
    el(
      "tr",
      {},
      ...["follower", "match", "next", "behind", "lag", "last ack", ""].map((h) => el("th", { text: h })),
    ),
  );
  const names = Object.keys(s.followers || {}).sort();
  for (const name of names) {
    const lag = s.followers[name];
    const width = Math.min(100, (lag.lag_ms / 1000) * 100);
    const bar = el("span");
    bar.style.width = Math.max(lag.lag_entries > 0 ? 3 : 0, width) + "%";
    if (lag.lag_ms > 500) bar.className = "bad";
    else if (lag.lag_ms > 100) bar.className = "warn";
    table.append(
      el(
        "tr",
        { "data-follower": name },
        el("td", { text: name }),
        el("td", { text: String(s.match_index[name] ?? "–") }),
        el("td", { text: String(s.next_index[name] ?? "–") }),
        el("td", { text: lag.lag_entries + (lag.lag_entries === 1 ? " entry" : " entries") }),
        el("td", { text: ms(lag.lag_ms) }),
        el("td", { text: ms(lag.last_ack_ms) }),
        el("td", {}, el("div", { class: "lagbar" }, bar)),
      ),
    );
  }
  return table;
}

function renderRates(view, leader) {
  const now = { at: view.at_ms, counters: new Map(), commit: leader ? leader.commit_index : null };
  for (const m of view.members || []) {
    if (m.reachable) now.counters.set(m.name, { reads: m.status.reads_total, writes: m.status.writes_total });
  }
  const before = state.previous;
  state.previous = now;
  if (!before || now.at <= before.at) return;
  const seconds = (now.at - before.at) / 1000;
  let reads = 0;
  let writes = 0;
  // Only members present in both views, so that one going away is no negative rate.
  for (const [name, counts] of now.counters) {
    const old = before.counters.get(name);
    if (!old) continue;
    reads += Math.max(0, counts.reads - old.reads);
    writes += Math.max(0, counts.writes - old.writes);
  }
  const commits = now.commit !== null && before.commit !== null ? Math.max(0, now.commit - before.commit) : 0;
  push("writes", writes / seconds);
  push("reads", reads / seconds);
  push("commits", commits / seconds);
}

function push(name, value) {
  const series = state.rates[name];
  series.push(value);
  if (series.length > RATE_WINDOW) series.shift();
  $("rate-" + name).textContent = value >= 100 ? Math.round(value).toLocaleString() : value.toFixed(1);
  const max = Math.max(1, ...series);
  const step = 120 / Math.max(1, series.length - 1);
  const points = series.map((v, i) => (i * step).toFixed(1) + "," + (29 - (v / max) * 27).toFixed(1));
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points.join(" "));
  $("spark-" + name).replaceChildren(line);
}

function observe(atMs, term, leader) {
  const last = state.observed[state.observed.length - 1];
  if (!last || last.term !== term || last.leader !== leader) {
    state.observed.push({ at_ms: atMs, term, leader });
    if (state.observed.length > 64) state.observed.shift();
  }
}

// The node's timeline and the page's own, by time; a change both saw is kept once.
function merge(served, observed) {
  const all = served.concat(observed).sort((a, b) => a.at_ms - b.at_ms);
  const merged = [];
  for (const change of all) {
    const last = merged[merged.length - 1];
    if (!last || last.term !== change.term || last.leader !== change.leader) merged.push(change);
  }
  return merged.slice(-64);
}

function renderTimeline(changes, nowMs) {
  const strip = $("strip");
  const list = $("timeline");
  if (changes.length === 0) {
    strip.replaceChildren();
    list.replaceChildren(el("li", { text: "no leader change seen yet" }));
    return;
  }
  const start = changes[0].at_ms;
  const span = Math.max(1, nowMs - start);
  strip.replaceChildren(
    ...changes.map((change, i) => {
      const end = i + 1 < changes.length ? changes[i + 1].at_ms : nowMs;
      const part = el("div", {
        text: change.leader ? "t" + change.term + " " + change.leader : "t" + change.term + " —",
        title: "term " + change.term + ": " + (change.leader || "no leader") + " from " + clock(change.at_ms),
      });
      part.style.flexGrow = String(Math.max(0.02, (end - change.at_ms) / span));
      part.style.background = colorOf(change.leader);
      return part;
    }),
  );
  list.replaceChildren(
    ...changes
      .slice()
      .reverse()
      .map((change) =>
        el(
          "li",
          {},
          el("span", { class: "when", text: clock(change.at_ms) }),
          el("span", { text: "term " + change.term }),
          el("span", { text: change.leader ? "leader " + change.leader : "no leader" }),
        ),
      ),
  );
}

// --- actions -------------------------------------------------------------------------

async function act(name, action) {
  const answer = await fetch("/ui/api/members/" + encodeURIComponent(name) + "/" + action, {
    method: "POST",
    headers: headers(),
  });
  if (!answer.ok) {
    const body = await answer.json().catch(() => ({}));
    showResult(action + " " + name + ": " + answer.status + " " + (body.error || ""));
  }
}

// Removes a member after showing the safety check's answer: a dry run first, then,
// if the operator confirms, the removal (forced only when the check advised against
// it and the operator confirmed that too).
async function removeMember(name) {
  const base = "/cluster/members/" + encodeURIComponent(name);
  const dry = await fetch(base + "?dry_run=true", { method: "DELETE", headers: headers() });
  const check = await dry.json().catch(() => ({}));
  if (!dry.ok) {
    showResult("remove " + name + ": " + dry.status + " " + (check.error || ""));
    return;
  }
  const a = check.assessment;
  const question =
    "Remove " + name + "?\n" +
    "voters " + a.before.voters + " → " + a.after.voters +
    ", quorum " + a.before.quorum + " → " + a.after.quorum +
    ", may fail " + a.before.may_fail + " → " + a.after.may_fail + "\n" +
    (a.safe ? "Safe: the reachable voters make a quorum after it." : "UNSAFE: " + a.risk + "\nRemove anyway?");
  if (!window.confirm(question)) {
    showResult("remove " + name + ": cancelled");
    return;
  }
  const done = await fetch(base + (a.safe ? "" : "?force=true"), { method: "DELETE", headers: headers() });
  const body = await done.json().catch(() => ({}));
  showResult("remove " + name + ": " + done.status + (done.ok ? " removed" : " " + (body.error || "")));
}

function showResult(text) {
  $("kv-result").textContent = text;
}

async function keyOperation(op) {
  const key = $("kv-key").value;
  if (!key) {
    showResult("enter a key");
    return;
  }
  const url = "/" + encodeURIComponent(key);
  const init = { headers: headers() };
  if (op === "put") {
    init.method = "POST";
    init.headers = headers({ "Content-Type": "application/json" });
    init.body = JSON.stringify({ value: $("kv-value").value });
  } else if (op === "delete") {
    init.method = "DELETE";
  }
  try {
    const answer = await fetch(url, init);
    const body = await answer.json();
    showResult(answer.status + " " + JSON.stringify(body, null, 2));
  } catch (err) {
    showResult("no answer: " + err);
  }
}

function setUp() {
  $("token").value = sessionStorage.getItem("distraft-token") || "";
  $("token").addEventListener("change", () => sessionStorage.setItem("distraft-token", token()));
  $("kv").addEventListener("submit", (event) => {
    event.preventDefault();
    keyOperation("get");
  });
  for (const button of document.querySelectorAll("#kv button[type=button]")) {
    button.addEventListener("click", () => keyOperation(button.dataset.op));
  }
  connect();
}

setUp();
