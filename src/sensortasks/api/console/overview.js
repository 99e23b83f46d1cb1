// Overview: tasks by status, sensors online, and the last hour's dispatch and completion rates.

import { get } from "./api.js";
import { rates } from "./chart.js";
import { debounce, h, notice, replace, STATUSES, status } from "./dom.js";

const REFRESH_MS = 10000;

export function render(root) {
  const body = h("div", { class: "overview" });
  const message = h("div");
  root.append(h("h2", {}, "Overview"), message, body);

  async function load() {
    try {
      const data = await get("/v1/overview");
      const sent = data.minutes.reduce((sum, m) => sum + m.dispatched, 0);
      const done = data.minutes.reduce((sum, m) => sum + m.completed, 0);
      replace(
        body,
        h(
          "div",
          { class: "cards" },
          STATUSES.map((name) =>
            h("a", { class: "card count", href: `#tasks?status=${name}`, "data-count": name },
              status(name), h("strong", {}, data.tasks[name])),
          ),
          h("div", { class: "card count", "data-count": "sensors" },
            h("span", {}, "Sensors online"), h("strong", {}, `${data.sensors_online} / ${data.sensors}`)),
        ),
        h("div", { class: "card" },
          h("h3", {}, `Last hour: ${sent} sent, ${done} completed`),
          h("p", { class: "legend" }, h("span", { class: "key dispatched" }, "sent"), " ",
            h("span", { class: "key completed" }, "completed")),
          rates(data.minutes)),
      );
      notice(message, null);
    } catch (error) {
      notice(message, error);
    }
  }

  const soon = debounce(load, 1000);
  const timer = setInterval(load, REFRESH_MS);
  load();
  return { onEvent: soon, dispose: () => clearInterval(timer) };
}
