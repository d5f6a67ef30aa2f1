// The operator console: polls /api/state, refreshes the live image, and posts the buttons.
"use strict";

const STATE_POLL_MS = 300;
const FRAME_POLL_MS = 250;
const $ = (id) => document.getElementById(id);
// Every POST carries the page's CSRF token (the server refuses it otherwise; see console_security.py).
const CSRF_TOKEN = document.querySelector('meta[name="fanvla-csrf"]').content;
const LOGIN_HINT = "not logged in: open the URL that 'fanvla eval run' printed for this run";
let lastSequence = -1;

function buttonsFor(phase) {
  return { start: phase === "setup", stop: phase === "running", success: phase === "scoring", failure: phase === "scoring" };
}

function render(state) {
  $("phase").textContent = state.phase;
  $("phase").dataset.phase = state.phase;
  $("task").textContent = state.task || "-";
  $("task-title").textContent = state.task_title ? `(${state.task_title})` : "";
  $("trial").textContent = state.trial >= 0 ? `${state.trial + 1} of ${state.trials} (#${state.trial})` : "-";
  $("policy-label").textContent = state.policy_label ? `\u00b7 ${state.policy_label}` : "";
  $("operator-text").textContent = state.operator_text || "Waiting for the first trial.";
  $("instruction").textContent = state.instruction || "";
  $("calibration-warning").hidden = state.calibrated;
  const episode = state.episode || {};
  $("episode").textContent = episode.status
    ? `Episode ${episode.status} after ${episode.steps} steps (${episode.duration_s} s): ${episode.reason}` : "";
  for (const [id, enabled] of Object.entries(buttonsFor(state.phase))) { $(id).disabled = !enabled; }
  if (state.sequence !== lastSequence) {
    showMessage(state.message, false);
    lastSequence = state.sequence;
  }
  const rows = Object.entries(state.progress || {}).map(([task, p]) =>
    `<tr><td>${task}</td><td>${p.scored}/${p.trials}</td><td>${p.successes}</td></tr>`);
  $("progress").querySelector("tbody").innerHTML = rows.join("");
}

function showMessage(text, isError) {
  $("message").textContent = text || "";
  $("message").classList.toggle("error", Boolean(isError));
}

async function pollState() {
  try {
    const response = await fetch("/api/state", { cache: "no-store" });
    if (response.ok) { render(await response.json()); }
    else if (response.status === 401) { showMessage(LOGIN_HINT, true); }
  } catch (error) {
    showMessage("the evaluation is not answering (did 'fanvla eval run' stop?)", true);
  }
  setTimeout(pollState, STATE_POLL_MS);
}

function refreshFrame() {
  const image = $("live");
  const next = new Image();
  next.onload = () => { image.src = next.src; setTimeout(refreshFrame, FRAME_POLL_MS); };
  next.onerror = () => setTimeout(refreshFrame, 1000);
  next.src = `/frame.jpg?t=${Date.now()}`;
}

async function press(path, body) {
  for (const id of ["start", "stop", "success", "failure"]) { $(id).disabled = true; }
  try {
    const response = await fetch(path, {
      method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": CSRF_TOKEN },
      body: JSON.stringify(body || {}),
    });
    const answer = await response.json();
    showMessage(answer.message, !answer.ok);
    return answer.ok;
  } catch (error) {
    showMessage(`could not reach the evaluation: ${error}`, true);
    return false;
  }
}

function score(success) {
  const note = $("note").value;
  press("/api/score", { success, note }).then((ok) => { if (ok) { $("note").value = ""; } });
}

$("start").addEventListener("click", () => press("/api/start"));
$("stop").addEventListener("click", () => press("/api/stop"));
$("success").addEventListener("click", () => score(true));
$("failure").addEventListener("click", () => score(false));
pollState();
refreshFrame();
