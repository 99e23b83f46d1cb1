// The live strip: the newest transitions of the customer's tasks, newest first.

import { h, status } from "./dom.js";

const KEEP = 30;

export function add(list, event) {
  const item = h(
    "li",
    { "data-task": event.task_id },
    h("time", {}, event.at.slice(11)),
    ` task ${event.task_id} · sensor ${event.sensor_serial} `,
    event.from ? status(event.from) : "new",
    " → ",
    status(event.to),
    event.reason ? h("span", { class: "reason" }, ` ${event.reason}`) : "",
  );
  list.prepend(item);
  while (list.children.length > KEEP) list.lastElementChild.remove();
}
