/* Shared helpers of the admin pages: JSON fetch with CSRF header, DOM building, formatting, polling. */
"use strict";

const NS = (() => {
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrfToken = csrfMeta ? csrfMeta.content : "";

  function toLogin() {
    window.location.href = "/login?next=" + encodeURIComponent(window.location.pathname + window.location.search);
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      if (typeof body.detail === "string") return body.detail;
      return JSON.stringify(body.detail || body);
    } catch (err) {
      return response.status + " " + response.statusText;
    }
  }

  async function getJSON(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (response.status === 401) { toLogin(); throw new Error("not logged in"); }
    if (!response.ok) throw new Error(await errorText(response));
    return response.json();
  }

  async function postJSON(url, body) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRF-Token": csrfToken },
      body: JSON.stringify(body || {}),
    });
    if (response.status === 401) { toLogin(); throw new Error("not logged in"); }
    if (!response.ok) throw new Error(await errorText(response));
    return response.json();
  }

  /* el("td", {class: "x", title: "t"}, "text", childNode) - text is always set as text, never as HTML. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function replaceRows(tbody, rows) {
    tbody.replaceChildren(...rows);
  }

  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "–";
    if (seconds < 1) return (seconds * 1000).toFixed(0) + " ms";
    if (seconds < 60) return seconds.toFixed(seconds < 10 ? 1 : 0) + " s";
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return minutes + " min " + Math.round(seconds % 60) + " s";
    return Math.floor(minutes / 60) + " h " + (minutes % 60) + " min";
  }

  function fmtTime(iso) {
    if (!iso) return "–";
    const date = new Date(iso);
    const sameDay = date.toDateString() === new Date().toDateString();
    const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    if (sameDay) return time;
    return date.toLocaleDateString([], { year: "numeric", month: "short", day: "numeric" }) + " " + time;
  }

  const STATE_CLASS = {
    done: "ok", partial: "warn", failed: "bad", cancelled: "muted", queued: "wait", retrying: "warn",
    delivered: "ok", pending: "wait",
  };

  function stateBadge(state) {
    const kind = STATE_CLASS[state] || "run";
    return el("span", { class: "badge badge-" + kind }, state);
  }

  function setBadge(node, state) {
    const kind = STATE_CLASS[state] || "run";
    node.className = "badge badge-" + kind;
    node.textContent = state;
  }

  // the job store's stage order and the timed steps (waits for a worker, then the stages), from the page
  const STAGES = JSON.parse(document.body.dataset.stages || "[]");
  const TIMED_STEPS = JSON.parse(document.body.dataset.timedSteps || "[]");

  /* Calls fn now and every intervalMs while the page is visible; reports into statusNode. */
  function poll(fn, intervalMs, statusNode) {
    let timer = null;
    async function tick() {
      clearTimeout(timer);
      try {
        await fn();
        if (statusNode) {
          statusNode.textContent = "live · updated " + new Date().toLocaleTimeString();
          statusNode.classList.remove("live-error");
        }
      } catch (err) {
        if (statusNode) {
          statusNode.textContent = "connection problem: " + err.message;
          statusNode.classList.add("live-error");
        }
      }
      if (!document.hidden) timer = setTimeout(tick, intervalMs);
    }
    document.addEventListener("visibilitychange", () => { if (!document.hidden) tick(); });
    tick();
    return { refresh: tick };
  }

  return {
    csrfToken, getJSON, postJSON, el, replaceRows, fmtDuration, fmtTime, stateBadge, setBadge, poll,
    STAGES, TIMED_STEPS,
  };
})();
