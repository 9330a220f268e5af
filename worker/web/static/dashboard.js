/* Dashboard: queue tiles, workers and the jobs list, refreshed every few seconds. */
"use strict";

(() => {
  const { el, getJSON, fmtDuration, fmtTime, stateBadge, poll, STAGES, TIMED_STEPS } = NS;
  const STAGE_SHORT = {
    queued: "wait", retrying: "retry wait", loading: "load", preprocessing: "prep", inference: "infer", explaining: "explain",
    encoding: "encode", delivering: "deliver",
  };
  const form = document.getElementById("job-filters");

  function jobsQuery() {
    const params = new URLSearchParams();
    const state = document.getElementById("filter-state").value;
    if (state === "running") STAGES.forEach((stage) => params.append("state", stage));
    else if (state) params.append("state", state);
    const review = document.getElementById("filter-review").value;
    if (review) params.set("review", review);
    const since = document.getElementById("filter-since").value;
    const until = document.getElementById("filter-until").value;
    if (since) params.set("since", new Date(since + "T00:00:00").toISOString());
    if (until) {
      const end = new Date(until + "T00:00:00");
      end.setDate(end.getDate() + 1);
      params.set("until", end.toISOString());
    }
    params.set("limit", "200");
    return "/api/jobs?" + params.toString();
  }

  function renderOverview(data) {
    const depth = data.queue_depth;
    document.getElementById("tile-queue").textContent = depth === null ? "?" : String(depth);
    const broker = document.getElementById("tile-broker");
    broker.textContent = data.broker_ok ? "broker reachable" : "broker unreachable";
    broker.className = "tile-note " + (data.broker_ok ? "" : "text-bad");
    if (!data.broker_ok) broker.title = data.broker_error;
    document.getElementById("tile-waiting").textContent = String(data.waiting_jobs);
    document.getElementById("tile-running").textContent = String(data.running_jobs);
    const counts = data.jobs_by_state;
    document.getElementById("tile-failed").textContent = String(counts.failed || 0);
    document.getElementById("tile-done").textContent =
      (counts.done || 0) + " done · " + (counts.partial || 0) + " partial";
    const online = data.workers.filter((worker) => worker.online).length;
    document.getElementById("tile-workers").textContent = String(online);
    const flower = document.getElementById("tile-flower");
    flower.replaceChildren();
    if (data.flower_url) {
      flower.appendChild(el("a", { href: data.flower_url, target: "_blank", rel: "noopener noreferrer" }, "open Flower ↗"));
    }
    const rows = data.workers.map((worker) => {
      const jobs = worker.current_jobs.length
        ? worker.current_jobs.map((job) => el("a", { href: "/jobs/" + job.id },
            job.id.slice(0, 8) + " · " + job.state + (job.percent ? " " + Math.round(job.percent) + "%" : "")))
        : [el("span", { class: "muted" }, "idle")];
      return el("tr", {},
        el("td", {}, el("span", { class: "dot dot-ok" }), " ", worker.name),
        el("td", {}, worker.device || "–"),
        el("td", {}, ...jobs),
        el("td", { class: "muted" }, worker.source));
    });
    NS.replaceRows(document.querySelector("#workers-table tbody"), rows);
    document.getElementById("workers-empty").hidden = rows.length > 0;
  }

  function progressCell(job) {
    const cell = el("td", { class: "stage-cell" });
    const running = STAGES.includes(job.state);
    let text = job.stage;
    if (job.state === "done") text = "finished";
    else if (["failed", "partial", "cancelled"].includes(job.state)) text = "stopped in " + job.stage;
    else if (job.state === "retrying") text = "waiting to retry";
    cell.appendChild(el("div", {}, text));
    if (running) {
      const bar = el("div", { class: "progress progress-small" }, el("div", { class: "progress-bar" }));
      bar.firstChild.style.width = Math.max(2, Math.min(100, job.percent)) + "%";
      cell.appendChild(bar);
      cell.appendChild(el("div", { class: "muted small" }, Math.round(job.percent) + "% · " + (job.message || "")));
    }
    return cell;
  }

  function stagesCell(job) {
    const chips = TIMED_STEPS.filter((stage) => stage in job.stage_durations).map((stage) =>
      el("span", { class: "chip" + (stage === job.state ? " chip-active" : ""), title: stage },
        STAGE_SHORT[stage] + " " + fmtDuration(job.stage_durations[stage])));
    return el("td", { class: "chips" }, chips.length ? chips : el("span", { class: "muted" }, "–"));
  }

  function renderJobs(data) {
    const rows = data.jobs.map((job) => {
      const patient = job.patient_name || job.patient_id
        ? [el("div", {}, job.patient_name || "–"), el("div", { class: "muted small" }, job.patient_id)]
        : [el("span", { class: "muted" }, "–")];
      const study = [el("div", {}, job.study_description || "(no description)"),
        el("div", { class: "muted small" }, job.accession_number ? "Acc. " + job.accession_number : "")];
      const links = [el("a", { class: "btn btn-small", href: "/jobs/" + job.id }, "Details")];
      if (job.has_results) {
        links.push(el("a", { class: "btn btn-small btn-primary", href: "/jobs/" + job.id + "/viewer" }, "3D"));
      }
      return el("tr", { dataset: { jobId: job.id, state: job.state } },
        el("td", { title: job.created_at }, fmtTime(job.created_at)),
        el("td", {}, ...patient),
        el("td", {}, ...study),
        el("td", {}, stateBadge(job.state), ...reviewBadge(job)),
        progressCell(job),
        stagesCell(job),
        el("td", {}, fmtDuration(job.duration_s)),
        el("td", { class: "num" }, String(job.attempts)),
        el("td", { class: "error-cell", title: job.error || "" }, job.error || ""),
        el("td", { class: "row-actions" }, ...links));
    });
    NS.replaceRows(document.querySelector("#jobs-table tbody"), rows);
    document.getElementById("jobs-empty").hidden = rows.length > 0;
  }

  // the quality estimate's flag: it informs the reader, the results were delivered either way
  function reviewBadge(job) {
    if (!job.review_recommended) return [];
    return [" ", el("span", { class: "badge badge-warn badge-review", title: "the quality estimate recommends "
      + "that a reader checks this result (see the job's details)" }, "review")];
  }

  async function refresh() {
    const [overview, jobs] = await Promise.all([getJSON("/api/overview"), getJSON(jobsQuery())]);
    renderOverview(overview);
    renderJobs(jobs);
  }

  const poller = poll(refresh, 3000, document.getElementById("live-status"));
  form.addEventListener("change", () => poller.refresh());
  form.addEventListener("reset", () => setTimeout(() => poller.refresh(), 0));
  form.addEventListener("submit", (event) => { event.preventDefault(); poller.refresh(); });
})();
