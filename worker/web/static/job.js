/* Job page: study, series with roles and reasons, stage timeline, outputs, deliveries and actions. */
"use strict";

(() => {
  const { el, getJSON, postJSON, fmtDuration, fmtTime, stateBadge, setBadge, poll, STAGES, TIMED_STEPS } = NS;
  const jobId = document.body.dataset.jobId;
  const ROLES = ["T1", "T1ce", "T2", "FLAIR", "other"];
  const chosenRoles = {};   // series uid -> role picked by the admin (kept across refreshes)
  let current = null;

  function fact(list, label, value) {
    list.appendChild(el("dt", {}, label));
    list.appendChild(el("dd", {}, value === null || value === undefined || value === "" ? "–" : value));
  }

  function showMessage(text, kind) {
    const box = document.getElementById("action-message");
    box.textContent = text;
    box.className = "notice notice-" + kind;
    box.hidden = false;
  }

  function renderFacts(job) {
    document.getElementById("study-title").textContent =
      (job.patient_name || "Unnamed patient") + " · " + (job.study_description || "study");
    setBadge(document.getElementById("job-state"), job.state);
    const study = document.getElementById("study-facts");
    study.replaceChildren();
    fact(study, "Patient name", job.patient_name);
    fact(study, "Patient ID", job.patient_id);
    fact(study, "Accession", job.accession_number);
    fact(study, "Description", job.study_description);
    fact(study, "Study UID", el("code", { class: "uid" }, job.study_instance_uid));
    const facts = document.getElementById("job-facts");
    facts.replaceChildren();
    fact(facts, "Job", el("code", {}, job.id));
    fact(facts, "Why", job.reason + (job.replaces_job_id ? " (replaces " + job.replaces_job_id.slice(0, 8) + ")" : ""));
    fact(facts, "Stage", job.stage + (STAGES.includes(job.state) ? " · " + Math.round(job.percent) + "%" : ""));
    fact(facts, "Message", job.message);
    fact(facts, "Received", fmtTime(job.created_at));
    fact(facts, "Finished", fmtTime(job.finished_at));
    fact(facts, "Total time", fmtDuration(job.duration_s));
    fact(facts, "Attempts", String(job.attempts));
    fact(facts, "Worker", job.worker ? job.worker + (job.device ? " · " + job.device : "") : "");
    fact(facts, "Model", job.model_version ? (job.model_name || "model") + " " + job.model_version : "");
    fact(facts, "Sequences used", job.sequences_used.join(", "));
    const volumes = Object.entries(job.volumes_ml || {}).map(([key, value]) => key.toUpperCase() + " " + value.toFixed(1) + " mL");
    fact(facts, "Tumour volumes", volumes.join(" · "));
    const progress = document.getElementById("job-progress");
    progress.hidden = !STAGES.includes(job.state);
    progress.firstChild.style.width = Math.max(2, job.percent) + "%";
    const errorCard = document.getElementById("error-card");
    errorCard.hidden = !job.error;
    document.getElementById("job-error").textContent = job.error || "";
  }

  function renderActions(job) {
    document.getElementById("open-viewer").hidden = !job.has_results;
    document.getElementById("action-retry").hidden = !job.actions.retry;
    document.getElementById("action-redeliver").hidden = !job.actions.redeliver;
    document.getElementById("action-cancel").hidden = !job.actions.cancel;
    const changed = Object.keys(chosenRoles).length > 0;
    const reprocess = document.getElementById("action-reprocess");
    reprocess.hidden = !job.actions.reprocess;
    reprocess.textContent = changed ? "Reprocess with the new roles" : "Reprocess";
    reprocess.classList.toggle("btn-primary", changed);
  }

  function roleSelect(series, allowed) {
    const select = el("select", { "aria-label": "Role for series " + (series.series_number || ""), disabled: !allowed },
      ...ROLES.map((role) => el("option", { value: role }, role)));
    select.value = chosenRoles[series.series_instance_uid] || series.role;
    select.addEventListener("change", () => {
      if (select.value === series.role) delete chosenRoles[series.series_instance_uid];
      else chosenRoles[series.series_instance_uid] = select.value;
      renderActions(current);
    });
    return select;
  }

  function renderSeries(job) {
    const rows = job.series.map((series) => {
      const reasons = el("ul", { class: "reasons" }, ...series.reasons.map((reason) => el("li", {}, reason)));
      const role = el("span", { class: "role role-" + series.classified_role.toLowerCase() }, series.classified_role);
      const overridden = series.role !== series.classified_role
        ? el("div", { class: "muted small" }, "used as " + series.role) : null;
      return el("tr", {},
        el("td", { class: "num" }, series.series_number === null ? "–" : String(series.series_number)),
        el("td", {}, series.series_description || "(no description)",
          el("div", { class: "muted small uid" }, series.series_instance_uid)),
        el("td", { class: "num" }, String(series.instance_count)),
        el("td", {}, role, overridden),
        el("td", { class: "num" }, Math.round(series.confidence * 100) + "%"),
        el("td", {}, reasons),
        el("td", {}, roleSelect(series, job.actions.reprocess)));
    });
    NS.replaceRows(document.querySelector("#series-table tbody"), rows);
  }

  function renderStages(job) {
    const rows = job.stages.map((stage) => el("tr", {},
      el("td", {}, stage.name),
      el("td", { class: "num" }, String(stage.attempt)),
      el("td", {}, fmtTime(stage.started_at)),
      el("td", {}, fmtDuration(stage.duration_s)),
      el("td", {}, el("span", { class: "outcome outcome-" + stage.outcome }, stage.outcome))));
    NS.replaceRows(document.querySelector("#stages-table tbody"), rows);
    const bar = document.getElementById("stage-bar");
    const total = Object.values(job.stage_durations).reduce((a, b) => a + b, 0);
    bar.replaceChildren(...TIMED_STEPS.filter((stage) => stage in job.stage_durations).map((stage) => {
      const part = el("div", { class: "timeline-part stage-" + stage, title: stage + " " + fmtDuration(job.stage_durations[stage]) },
        stage);
      part.style.flexGrow = String(Math.max(job.stage_durations[stage] / (total || 1), 0.06));
      return part;
    }));
  }

  function renderDeliveries(job) {
    const rows = job.deliveries.map((item) => el("tr", {},
      el("td", {}, item.destination),
      el("td", { title: item.last_error || "" }, stateBadge(item.status),
        item.last_error ? el("div", { class: "muted small" }, item.last_error) : null),
      el("td", { class: "num" }, String(item.sent)),
      el("td", { class: "num" }, String(item.failed)),
      el("td", { class: "num" }, String(item.attempts)),
      el("td", {}, fmtTime(item.last_attempt_at))));
    NS.replaceRows(document.querySelector("#deliveries-table tbody"), rows);
    document.getElementById("deliveries-empty").hidden = rows.length > 0;
  }

  function renderOutputs(job) {
    const rows = job.outputs.map((item) => el("tr", {},
      el("td", {}, item.kind), el("td", {}, el("code", { class: "uid" }, item.sop_instance_uid))));
    NS.replaceRows(document.querySelector("#outputs-table tbody"), rows);
    document.getElementById("outputs-empty").hidden = rows.length > 0;
    const related = job.study_jobs.map((item) => el("tr", { class: item.id === job.id ? "row-current" : "" },
      el("td", {}, item.id === job.id ? fmtTime(item.created_at) + " (this job)"
        : el("a", { href: "/jobs/" + item.id }, fmtTime(item.created_at))),
      el("td", {}, item.reason),
      el("td", {}, stateBadge(item.state))));
    NS.replaceRows(document.querySelector("#related-table tbody"), related);
  }

  function renderEvents(job) {
    const items = job.events.slice().reverse().map((event) => el("li", {},
      el("time", { datetime: event.at }, fmtTime(event.at)), " ",
      el("span", { class: "event-kind" }, event.kind), " ", event.message));
    document.getElementById("events").replaceChildren(...items);
  }

  async function refresh() {
    const job = await getJSON("/api/jobs/" + encodeURIComponent(jobId));
    current = job;
    renderFacts(job);
    renderActions(job);
    renderSeries(job);
    renderStages(job);
    renderDeliveries(job);
    renderOutputs(job);
    renderEvents(job);
  }

  const poller = poll(refresh, 3000, document.getElementById("live-status"));

  async function act(button, path, body, confirmText) {
    if (confirmText && !window.confirm(confirmText)) return;
    button.disabled = true;
    try {
      const result = await postJSON("/api/jobs/" + encodeURIComponent(jobId) + "/" + path, body);
      if (path === "reprocess") {
        window.location.href = "/jobs/" + result.job_id;
        return;
      }
      showMessage(result.message, "ok");
      await poller.refresh();
    } catch (err) {
      showMessage(err.message, "error");
    } finally {
      button.disabled = false;
    }
  }

  document.getElementById("action-retry").addEventListener("click", (e) => act(e.target, "retry", {}, "Run this job again?"));
  document.getElementById("action-redeliver").addEventListener("click", (e) => act(e.target, "redeliver", {}, "Send the outputs to every destination again?"));
  document.getElementById("action-cancel").addEventListener("click", (e) => act(e.target, "cancel", {}, "Cancel this job?"));
  document.getElementById("action-reprocess").addEventListener("click", (e) => {
    const roles = Object.assign({}, chosenRoles);
    const list = Object.entries(roles).map(([uid, role]) => role).join(", ");
    const text = list ? "Process the study again with the changed roles (" + list + ")?" : "Process the study again?";
    act(e.target, "reprocess", { roles }, text);
  });
})();
