// Tasks: the list with every filter of GET /v1/tasks and cursor paging, a task's history and
// result, create and cancel. Rows follow the live events without reloading the page.

import { del, get, post } from "./api.js";
import { debounce, field, fill, h, notice, pager, replace, STATUSES, status, values } from "./dom.js";

const TYPES = ["update_firmware", "update_configuration"];
const ACTIVE = new Set(["Pending", "Ongoing"]);

function filterForm(initial, onApply) {
  const input = (name, attrs = {}) => h("input", { name, value: initial[name], ...attrs });
  const form = h(
    "form",
    { class: "filters", id: "task-filters" },
    field("Sensor", input("sensor_serial", { inputmode: "numeric", placeholder: "serial" })),
    h("fieldset", { class: "statuses" }, h("legend", {}, "Status"),
      STATUSES.map((name) => h("label", {}, h("input", { type: "checkbox", name: "status", value: name,
        checked: [].concat(initial.status || []).includes(name) }), name))),
    field("Type", h("select", { name: "type" }, h("option", { value: "" }, "any"),
      TYPES.map((t) => h("option", { value: t, selected: initial.type === t }, t)))),
    field("Rollout", input("rollout_id", { inputmode: "numeric" })),
    field("Created since", input("created_since", { placeholder: "YYYY-MM-DD" })),
    field("Created until", input("created_until", { placeholder: "YYYY-MM-DD" })),
    field("Updated since", input("updated_since", { placeholder: "YYYY-MM-DD HH:MM:SS" })),
    field("Updated until", input("updated_until")),
    field("Per page", input("limit", { type: "number", min: 1, max: 1000, value: initial.limit || 25 })),
    h("button", { type: "submit" }, "Apply"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    onApply(values(form));
  });
  return form;
}

function createForm(onCreated, message) {
  const form = h(
    "form",
    { class: "create", id: "task-create" },
    h("h3", {}, "New task"),
    field("Sensor serial", h("input", { name: "sensor_serial", inputmode: "numeric", required: true })),
    field("File id (UUID)", h("input", { name: "file_id", required: true, size: 36 })),
    field("Type", h("select", { name: "type" }, TYPES.map((t) => h("option", { value: t }, t)))),
    field("Max attempts", h("input", { name: "max_attempts", type: "number", min: 1, max: 10 })),
    field("Timeout (s)", h("input", { name: "timeout_s", type: "number", min: 10, max: 86400 })),
    h("button", { type: "submit" }, "Create"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = values(form);
    for (const name of ["sensor_serial", "max_attempts", "timeout_s"]) if (name in body) body[name] = Number(body[name]);
    try {
      const task = await post("/v1/tasks", body);
      notice(message, { ok: true, message: `Task ${task.id} created.` });
      onCreated(task);
    } catch (error) {
      notice(message, error);
    }
  });
  return form;
}

function detail(task, events, result) {
  const rows = [["Sensor", task.sensor_serial], ["Type", task.type], ["File", task.file_id],
    ["Attempts", `${task.attempt_count} of ${task.max_attempts}`], ["Progress", task.progress ?? "—"],
    ["Created", task.created_at], ["Started", task.started_at ?? "—"], ["Ended", task.completed_at ?? "—"],
    ["Rollout", task.rollout_id ?? "—"], ["Error", task.error ?? "—"]];
  return [
    h("h3", {}, `Task ${task.id} `, status(task.status_name)),
    h("dl", {}, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    h("h4", {}, "History"),
    h("table", { class: "history" },
      h("thead", {}, h("tr", {}, ["At", "Kind", "From", "To", "Attempt", "Reason"].map((c) => h("th", {}, c)))),
      h("tbody", {}, events.map((e) => h("tr", {}, h("td", {}, e.at), h("td", {}, e.kind),
        h("td", {}, e.from_status_name ? status(e.from_status_name) : "—"),
        h("td", {}, e.to_status_name ? status(e.to_status_name) : "—"),
        h("td", {}, e.attempt), h("td", {}, e.reason ?? ""))))),
    h("h4", {}, "Result"),
    result ? h("pre", { class: "result" }, JSON.stringify(result.result ?? result, null, 2)) : h("p", {}, "None yet."),
  ];
}

export function render(root) {
  const initial = Object.fromEntries(new URLSearchParams(location.hash.split("?")[1] || ""));
  let filters = { limit: 25, ...initial };
  let cursors = [null]; // the cursor of each page seen, for "previous"
  let shown = new Map(); // task id -> its row
  let open = null; // the task whose detail is shown
  const message = h("div");
  const table = h("tbody");
  const paging = h("div", { class: "pager" });
  const panel = h("section", { class: "detail card", id: "task-detail", hidden: true });

  function row(task) {
    const cancel = ACTIVE.has(task.status_name)
      ? h("button", { type: "button", class: "cancel", onclick: (e) => { e.stopPropagation(); cancelTask(task.id); } },
        "Cancel")
      : "";
    return h("tr", { "data-task": task.id, "data-status": task.status_name, onclick: () => showDetail(task.id) },
      h("td", { class: "id" }, task.id),
      h("td", {}, task.sensor_serial), h("td", {}, task.type), h("td", {}, status(task.status_name)),
      h("td", {}, task.attempt_count), h("td", {}, task.progress ?? ""), h("td", {}, task.updated_at),
      h("td", {}, cancel));
  }

  async function load() {
    const cursor = cursors[cursors.length - 1];
    try {
      const status = [].concat(filters.status || []).join(","); // names, comma-separated
      const page = await get("/v1/tasks", { ...filters, status, cursor });
      shown = new Map(page.data.map((t) => [t.id, row(t)]));
      fill(table, [...shown.values()], 8, "No task matches.");
      pager(paging, cursors, page, load);
      notice(message, null);
    } catch (error) {
      notice(message, error);
    }
  }

  async function refresh(id) {
    const old = shown.get(id);
    if (!old) return;
    try {
      const fresh = row(await get(`/v1/tasks/${id}`));
      old.replaceWith(fresh);
      shown.set(id, fresh);
    } catch (error) {
      notice(message, error);
    }
  }

  async function showDetail(id) {
    open = id;
    try {
      const [task, history] = await Promise.all([get(`/v1/tasks/${id}`), get(`/v1/tasks/${id}/events`)]);
      const ended = task.status_name === "Completed" || task.status_name === "Error";
      const result = ended ? await get(`/v1/tasks/${id}/result`) : null;
      if (open !== id) return;
      replace(panel, h("button", { type: "button", class: "close", onclick: () => { open = null; panel.hidden = true; } },
        "Close"), detail(task, history.data, result));
      panel.hidden = false;
    } catch (error) {
      notice(message, error);
    }
  }

  async function cancelTask(id) {
    try {
      await del(`/v1/tasks/${id}`);
      notice(message, { ok: true, message: `Task ${id} cancelled.` });
      await refresh(id);
    } catch (error) {
      notice(message, error);
    }
  }

  const reload = debounce(load, 300);
  root.append(
    h("h2", {}, "Tasks"),
    filterForm(filters, (chosen) => { filters = chosen; cursors = [null]; load(); }),
    message,
    h("table", { class: "tasks", id: "tasks" },
      h("thead", {}, h("tr", {}, ["Id", "Sensor", "Type", "Status", "Attempts", "Progress", "Updated", ""]
        .map((c) => h("th", {}, c)))), table),
    paging,
    panel,
    createForm(() => { if (cursors.length === 1) reload(); }, message),
  );
  load();
  return {
    onEvent(event) {
      if (shown.has(event.task_id)) refresh(event.task_id);
      else if (event.from === null && cursors.length === 1) reload(); // a new task: on the first page
      if (open === event.task_id) showDetail(open);
    },
    dispose() {},
  };
}
