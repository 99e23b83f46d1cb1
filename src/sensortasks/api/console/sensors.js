// Sensors: presence, the task in flight, the queue and labels of each; register one, with its
// broker credentials shown once.

import { get, post } from "./api.js";
import { debounce, field, fill, h, labelList, labelMap, labels, notice, pager, replace } from "./dom.js";

const PAGE = 20;

function credentials(registered) {
  if (!registered.mqtt) return h("p", {}, `Sensor ${registered.serial} registered (no broker account issued here).`);
  const { username, password, client_id: clientId } = registered.mqtt;
  return h("div", { class: "credentials", id: "credentials" },
    h("p", {}, h("strong", {}, `Sensor ${registered.serial}: its broker credentials, shown only now. Copy them.`)),
    h("dl", {}, h("dt", {}, "Username"), h("dd", {}, h("code", {}, username)),
      h("dt", {}, "Password"), h("dd", {}, h("code", {}, password)),
      h("dt", {}, "Client id"), h("dd", {}, h("code", {}, clientId))));
}

export function render(root) {
  let selector = [];
  let cursors = [null];
  let rows = new Map(); // serial -> its row
  const message = h("div");
  const table = h("tbody");
  const paging = h("div", { class: "pager" });
  const issued = h("div");

  function row(sensor, info) {
    const presence = sensor.online === null ? "never seen" : sensor.online ? "online" : "offline";
    return h("tr", { "data-serial": sensor.serial },
      h("td", {}, sensor.serial),
      h("td", {}, h("span", { class: `presence ${presence.replace(" ", "-")}` }, presence)),
      h("td", {}, sensor.last_seen ?? "—"),
      h("td", {}, info ? (info.task_in_flight ?? "—") : "…"),
      h("td", {}, info ? info.queued : "…"),
      h("td", {}, labels(sensor.labels)));
  }

  async function detail(sensor) {
    const info = await get(`/v1/sensors/${sensor.serial}`);
    const fresh = row({ ...sensor, online: info.online, last_seen: info.last_seen }, info);
    rows.get(sensor.serial)?.replaceWith(fresh);
    rows.set(sensor.serial, fresh);
  }

  let listed = [];
  async function load() {
    try {
      const page = await get("/v1/sensors", { label: selector, limit: PAGE, cursor: cursors[cursors.length - 1] });
      listed = page.data;
      rows = new Map(listed.map((s) => [s.serial, row(s, null)]));
      fill(table, [...rows.values()], 6, "No sensor matches.");
      pager(paging, cursors, page, load);
      await Promise.all(listed.map(detail)); // the queue of each: GET /v1/sensors/{serial}
      notice(message, null);
    } catch (error) {
      notice(message, error);
    }
  }

  const filter = h("form", { class: "filters" },
    field("Labels (key:value, comma-separated)", h("input", { name: "labels", placeholder: "site:a, ring:canary" })),
    h("button", { type: "submit" }, "Apply"));
  filter.addEventListener("submit", (event) => {
    event.preventDefault();
    selector = labelList(new FormData(filter).get("labels"));
    cursors = [null];
    load();
  });

  const register = h("form", { class: "create", id: "sensor-register" },
    h("h3", {}, "Register a sensor"),
    field("Serial", h("input", { name: "serial", inputmode: "numeric", required: true })),
    field("Labels (key:value, comma-separated)", h("input", { name: "labels" })),
    h("button", { type: "submit" }, "Register"));
  register.addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData(register);
    const body = { serial: Number(form.get("serial")), labels: labelMap(labelList(form.get("labels"))) };
    try {
      replace(issued, credentials(await post("/v1/sensors", body)));
      register.reset();
      load();
    } catch (error) {
      notice(message, error);
    }
  });

  const soon = debounce(() => Promise.all(listed.map(detail)).catch((error) => notice(message, error)), 500);
  root.append(h("h2", {}, "Sensors"), filter, message,
    h("table", { class: "sensors", id: "sensors" },
      h("thead", {}, h("tr", {}, ["Serial", "Presence", "Last seen", "Task in flight", "Queued", "Labels"]
        .map((c) => h("th", {}, c)))), table),
    paging, register, issued);
  load();
  return {
    onEvent(event) {
      if (rows.has(event.sensor_serial)) soon();
    },
    dispose() {},
  };
}
