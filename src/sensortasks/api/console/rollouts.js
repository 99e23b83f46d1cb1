// Rollouts: state, totals as a progress bar, rate; pause, resume, cancel; create one from a form
// that shows how many sensors its selector matches before it starts.

import { get, post } from "./api.js";
import { debounce, field, fill, h, labelList, labelMap, notice, pager, replace } from "./dom.js";

const STATES = ["scheduled", "running", "paused", "completed", "aborted", "cancelled"];
const LIVE = new Set(["scheduled", "running", "paused"]);
const TYPES = ["update_firmware", "update_configuration"];

function progress(totals) {
  const done = totals.completed + totals.error + totals.cancelled;
  return h("div", { class: "progress" },
    h("progress", { max: Math.max(1, totals.targets), value: done }),
    h("span", {}, `${done} / ${totals.targets} finished · ${totals.pending + totals.ongoing} in flight · ` +
      `${totals.completed} completed · ${totals.error} error · ${totals.not_started} not started`));
}

function createForm(onCreated, message) {
  const count = h("output", { id: "match-count" }, "no selector");
  const form = h("form", { class: "create", id: "rollout-create" },
    h("h3", {}, "New rollout"),
    field("Name", h("input", { name: "name", required: true, maxlength: 100 })),
    field("Type", h("select", { name: "type" }, TYPES.map((t) => h("option", { value: t }, t)))),
    field("File id (UUID)", h("input", { name: "file_id", required: true, size: 36 })),
    field("Selector labels (key:value, comma-separated)", h("input", { name: "selector", placeholder: "site:a" })),
    h("p", { class: "match" }, "Matching sensors now: ", count),
    field("Sensors (serials, comma-separated)", h("input", { name: "sensors" })),
    field("Max in flight", h("input", { name: "max_in_flight", type: "number", min: 1, value: 100 })),
    field("Rate (tasks per minute, empty: unpaced)", h("input", { name: "per_minute", type: "number", min: 0.1, step: "any" })),
    h("button", { type: "submit" }, "Start rollout"));

  const recount = debounce(async () => {
    const selector = labelList(new FormData(form).get("selector"));
    if (!selector.length) return replace(count, "no selector");
    try {
      replace(count, String((await get("/v1/sensors/count", { label: selector })).count));
    } catch (error) {
      replace(count, error.message);
    }
  }, 300);
  form.elements.selector.addEventListener("input", recount);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const selector = labelList(data.get("selector"));
    const sensors = labelList(data.get("sensors")).map(Number);
    const body = { name: data.get("name").trim(), type: data.get("type"), file_id: data.get("file_id").trim(),
      max_in_flight: Number(data.get("max_in_flight") || 100) };
    if (selector.length) body.selector = { labels: labelMap(selector) };
    if (sensors.length) body.sensors = sensors;
    if (data.get("per_minute")) body.rate = { per_minute: Number(data.get("per_minute")) };
    try {
      const rollout = await post("/v1/rollouts", body);
      notice(message, { ok: true, message: `Rollout ${rollout.id} created: ${rollout.totals.targets} targets.` });
      onCreated(rollout);
    } catch (error) {
      notice(message, error);
    }
  });
  return form;
}

export function render(root) {
  let state = "";
  let cursors = [null];
  let rows = new Map(); // rollout id -> its row
  const message = h("div");
  const table = h("tbody");
  const paging = h("div", { class: "pager" });

  async function act(id, action) {
    try {
      const body = action === "cancel" ? { in_flight: "finish" } : undefined;
      update(await post(`/v1/rollouts/${id}/${action}`, body));
    } catch (error) {
      notice(message, error);
    }
  }

  function row(r) {
    const button = (action, label) =>
      h("button", { type: "button", class: action, onclick: () => act(r.id, action) }, label);
    const actions = LIVE.has(r.state)
      ? [r.state === "paused" ? button("resume", "Resume") : button("pause", "Pause"), button("cancel", "Cancel")]
      : [];
    return h("tr", { "data-rollout": r.id, "data-state": r.state },
      h("td", {}, r.id), h("td", {}, r.name),
      h("td", {}, h("span", { class: `state state-${r.state}` }, r.state)),
      h("td", {}, progress(r.totals)),
      h("td", {}, r.rate_per_minute === null ? "unpaced" : `${r.rate_per_minute}/min`),
      h("td", {}, r.reason ?? ""), h("td", {}, actions));
  }

  function update(rollout) {
    const fresh = row(rollout);
    rows.get(rollout.id)?.replaceWith(fresh);
    rows.set(rollout.id, fresh);
  }

  async function load() {
    try {
      const page = await get("/v1/rollouts", { state, limit: 20, cursor: cursors[cursors.length - 1] });
      rows = new Map(page.data.map((r) => [r.id, row(r)]));
      fill(table, [...rows.values()], 7, "No rollout yet.");
      pager(paging, cursors, page, load);
      notice(message, null);
    } catch (error) {
      notice(message, error);
    }
  }

  const pending = new Set(); // rollouts with news, refreshed together
  const refresh = debounce(async () => {
    const ids = [...pending].filter((id) => rows.has(id));
    pending.clear();
    try {
      for (const rollout of await Promise.all(ids.map((id) => get(`/v1/rollouts/${id}`)))) update(rollout);
    } catch (error) {
      notice(message, error);
    }
  }, 500);

  const filter = h("form", { class: "filters" },
    field("State", h("select", { name: "state" }, h("option", { value: "" }, "any"),
      STATES.map((s) => h("option", { value: s }, s)))),
    h("button", { type: "submit" }, "Apply"));
  filter.addEventListener("submit", (event) => {
    event.preventDefault();
    state = new FormData(filter).get("state");
    cursors = [null];
    load();
  });

  root.append(h("h2", {}, "Rollouts"), filter, message,
    h("table", { class: "rollouts", id: "rollouts" },
      h("thead", {}, h("tr", {}, ["Id", "Name", "State", "Progress", "Rate", "Reason", ""].map((c) => h("th", {}, c)))),
      table),
    paging, createForm(() => { cursors = [null]; load(); }, message));
  load();
  // State changes with no task event (scheduled -> running, a pacing round's abort) show up too.
  const timer = setInterval(() => {
    for (const [id, tr] of rows) if (LIVE.has(tr.dataset.state)) pending.add(id);
    refresh();
  }, 5000);
  return {
    onEvent(event) {
      if (event.rollout_id !== null && event.rollout_id !== undefined) {
        pending.add(event.rollout_id);
        refresh();
      }
    },
    dispose: () => clearInterval(timer),
  };
}
