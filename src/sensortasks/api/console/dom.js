// Small DOM helpers: elements built with text nodes only (no innerHTML: nothing the server or a
// sensor reported can become markup).

export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "class") element.className = value;
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

export const STATUSES = ["Pending", "Ongoing", "Completed", "Error", "Cancelled"];

export function status(name) {
  return h("span", { class: `status status-${name}`, "data-status": name }, name);
}

export function field(label, input) {
  return h("label", { class: "field" }, h("span", {}, label), input);
}

// A form's values, trimmed; empty ones left out.
export function values(form) {
  const out = {};
  for (const [name, value] of new FormData(form).entries()) {
    const text = String(value).trim();
    if (text) out[name] = name in out ? [].concat(out[name], text) : text;
  }
  return out;
}

// A message line for a page: errors in red, the server's message as it said it.
export function notice(element, error) {
  replace(element, error ? h("p", { class: error.ok ? "ok" : "error", role: "status" }, error.message) : "");
}

// Calls `work` at most once per `ms`, with the latest arguments (bursts of events).
export function debounce(work, ms = 250) {
  let timer = null;
  return () => {
    if (timer === null) {
      timer = setTimeout(() => {
        timer = null;
        work();
      }, ms);
    }
  };
}

// "k:v, k2:v2" or one per line -> ["k:v", "k2:v2"] (the label query parameter's form).
export function labelList(text) {
  return (text || "")
    .split(/[\n,]/)
    .map((s) => s.trim())
    .filter(Boolean);
}

// ["k:v"] -> {"k": "v"} (a selector's or a registration's labels).
export function labelMap(list) {
  return Object.fromEntries(
    list.map((pair) => {
      const colon = pair.indexOf(":");
      return colon < 0 ? [pair, ""] : [pair.slice(0, colon).trim(), pair.slice(colon + 1).trim()];
    }),
  );
}

// A list's rows, or one row that says the list is empty.
export function fill(tbody, rows, columns, empty) {
  replace(tbody, rows.length ? rows : h("tr", {}, h("td", { colspan: columns }, empty)));
}

// Cursor paging: `cursors` is the cursor of each page seen (null for the first), the last one
// the current page's; `page` the list answer, `load` what shows the current page.
export function pager(element, cursors, page, load) {
  replace(
    element,
    h("button", { type: "button", class: "previous", disabled: cursors.length === 1,
      onclick: () => { cursors.pop(); load(); } }, "Previous"),
    ` page ${cursors.length} `,
    h("button", { type: "button", class: "next", disabled: !page.has_more,
      onclick: () => { cursors.push(page.next_cursor); load(); } }, "Next"),
  );
}

export function labels(map) {
  const entries = Object.entries(map || {});
  return entries.length ? entries.map(([k, v]) => h("span", { class: "label" }, `${k}:${v}`)) : "—";
}
