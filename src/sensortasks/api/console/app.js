// The console's shell: log in and out, one page at a time by the URL's #fragment, and the live
// strip, whose events every page also hears (to update what it shows without reloading).

import { ApiError, follow, get, session } from "./api.js";
import { notice } from "./dom.js";
import * as live from "./live.js";
import * as overview from "./overview.js";
import * as rollouts from "./rollouts.js";
import * as sensors from "./sensors.js";
import * as tasks from "./tasks.js";

const PAGES = { overview, tasks, sensors, rollouts };
const $ = (id) => document.getElementById(id);
let current = null;
let unfollow = null;

function show(loggedIn) {
  $("login").hidden = loggedIn;
  $("nav").hidden = !loggedIn;
  $("logout").hidden = !loggedIn;
  $("live").hidden = !loggedIn;
  $("page").hidden = !loggedIn;
}

function route() {
  if (!session.key()) return;
  const name = location.hash.slice(1).split("?")[0] || "overview";
  const page = PAGES[name] || overview;
  if (current) current.dispose();
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.dataset.page === name);
  }
  const root = $("page");
  root.replaceChildren();
  root.dataset.page = name;
  current = page.render(root);
}

function onEvent(event) {
  live.add($("live-events"), event);
  if (current && current.onEvent) current.onEvent(event);
}

function onState(state) {
  $("live-state").textContent = state;
  $("live-state").dataset.state = state;
  if (state === "unauthorized") logout("The key was refused: log in again.");
}

function start() {
  show(true);
  unfollow = follow(onEvent, onState);
  route();
}

function logout(message) {
  session.logout();
  if (unfollow) unfollow();
  if (current) current.dispose();
  current = null;
  $("live-events").replaceChildren();
  show(false);
  notice($("login-notice"), message ? { message } : null);
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  session.login($("key").value);
  try {
    await get("/v1/overview"); // the key is checked once, here, before anything else
  } catch (error) {
    session.logout();
    const message = error instanceof ApiError && error.status === 401 ? "That key is not valid." : error.message;
    notice($("login-notice"), { message });
    return;
  }
  $("key").value = "";
  notice($("login-notice"), null);
  start();
});
$("logout").addEventListener("click", () => logout("Logged out."));
window.addEventListener("hashchange", route);

if (session.key()) start();
else show(false);
