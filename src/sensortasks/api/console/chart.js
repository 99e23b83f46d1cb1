// A small bar chart as SVG (attributes only: the page's policy allows no inline styles).

const SVG = "http://www.w3.org/2000/svg";

function node(tag, attrs = {}, text) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) element.setAttribute(name, String(value));
  if (text !== undefined) element.textContent = text;
  return element;
}

// `minutes`: [{start, dispatched, completed}], oldest first; two bars per minute.
export function rates(minutes, { width = 600, height = 140 } = {}) {
  const top = Math.max(1, ...minutes.map((m) => Math.max(m.dispatched, m.completed)));
  const slot = width / minutes.length;
  const bar = Math.max(1, slot / 2 - 0.5);
  const plot = height - 16;
  const svg = node("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img" });
  svg.append(node("title", {}, "Attempts sent and tasks completed per minute, last hour"));
  minutes.forEach((minute, i) => {
    for (const [key, offset] of [["dispatched", 0], ["completed", bar]]) {
      const value = minute[key];
      const tall = (value / top) * plot;
      const rect = node("rect", { x: i * slot + offset, y: plot - tall, width: bar, height: tall, class: key });
      rect.append(node("title", {}, `${minute.start.slice(11, 16)} ${key}: ${value}`));
      svg.append(rect);
    }
  });
  svg.append(node("line", { x1: 0, y1: plot, x2: width, y2: plot, class: "axis" }));
  svg.append(node("text", { x: 0, y: height - 2, class: "tick" }, minutes[0].start.slice(11, 16)));
  svg.append(node("text", { x: width, y: height - 2, class: "tick end" }, "now"));
  svg.append(node("text", { x: 2, y: 10, class: "tick" }, `max ${top}/min`));
  return svg;
}
