"""The follow-up pages: a patient's time line of tumour volumes (one line per region), linking every job.

- ``GET /patients/{patient_key}``: the page, with the plot drawn on the
  server as inline SVG (no script, so the CSP stays strict);
- ``GET /jobs/{job_id}/followup``: from a job page to its patient's page;
- ``GET /api/patients/{patient_key}/timeline``: the same figures as JSON.

The key is the digest of PatientID, issuer, birth date and sex
(:class:`~neuroseg.worker.jobs.followups.PatientIdentity`), so no patient
identifier goes into a URL or an access log. Both need a login, like every
page with patient data. ET classes are research use, not a response assessment.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse

from neuroseg.worker.web.auth import ApiUser, PageUser
from neuroseg.worker.web.pages import render

router = APIRouter(include_in_schema=True)

REGIONS = ("ncr", "ed", "et", "tc", "wt")
COLOURS = {"ncr": "#d62728", "ed": "#2ca02c", "et": "#e6b800", "tc": "#9467bd", "wt": "#1f77b4"}
WIDTH, HEIGHT, MARGIN = 640, 300, 48
RESEARCH_USE = "research use, not a response assessment"


def time_line(store: Any, patient_key: str) -> list[dict[str, Any]]:
    """The patient's finished studies, oldest first, with volumes and the comparison with their prior."""
    points = store.patient_time_line(patient_key)
    return [{"job_id": point.job_id, "study_instance_uid": point.study_instance_uid,
             "study_date": point.study_date, "state": point.state, "status": point.status,
             "prior_job_id": point.prior_job_id, "note": point.note,
             "volumes_ml": {key: round(float(point.volumes_ml.get(key, 0.0)), 2) for key in REGIONS},
             "et_class": (point.summary.get("et_class") or {}).get("category", "")}
            for point in points]


def plot(points: list[dict[str, Any]]) -> dict[str, Any]:
    """SVG geometry of the volume plot: one polyline per region, x by study order, y in ml from 0."""
    top = max([max(point["volumes_ml"].values(), default=0.0) for point in points] + [1.0])
    count = len(points)

    def x(index: int) -> float:
        return MARGIN + (WIDTH - 2 * MARGIN) * (index / (count - 1) if count > 1 else 0.5)

    def y(value: float) -> float:
        return HEIGHT - MARGIN - (HEIGHT - 2 * MARGIN) * value / top

    lines = [{"region": region, "colour": COLOURS[region],
              "points": " ".join(f"{x(i):.1f},{y(p['volumes_ml'][region]):.1f}" for i, p in enumerate(points)),
              "markers": [{"x": round(x(i), 1), "y": round(y(p["volumes_ml"][region]), 1),
                           "label": f"{region.upper()} {p['volumes_ml'][region]:.1f} ml ({p['study_date']})"}
                          for i, p in enumerate(points)]}
             for region in REGIONS]
    ticks = [{"y": round(y(top * f), 1), "label": f"{top * f:.1f}"} for f in (0.0, 0.5, 1.0)]
    dates = [{"x": round(x(i), 1), "label": p["study_date"] or "?"} for i, p in enumerate(points)]
    return {"width": WIDTH, "height": HEIGHT, "margin": MARGIN, "lines": lines, "ticks": ticks, "dates": dates}


@router.get("/api/patients/{patient_key}/timeline", tags=["admin API"],
            summary="A patient's studies with volumes per region and the comparison with each prior")
def get_time_line(request: Request, patient_key: str, user: ApiUser) -> dict[str, Any]:
    points = time_line(request.app.state.jobstore.get(), patient_key)
    if not points:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no finished study of patient {patient_key}")
    return {"patient_key": patient_key, "time_points": points, "note": RESEARCH_USE}


@router.get("/patients/{patient_key}", response_class=HTMLResponse, include_in_schema=False)
def patient_page(request: Request, patient_key: str, user: PageUser) -> HTMLResponse:
    points = time_line(request.app.state.jobstore.get(), patient_key)
    if not points:
        return render(request, "not_found.html", status_code=404, what=f"patient {patient_key[:8]}")
    return render(request, "patient.html", page="patient", patient_key=patient_key, points=points,
                  plot=plot(points), research_use=RESEARCH_USE)


@router.get("/jobs/{job_id}/followup", response_model=None, include_in_schema=False)
def job_followup(request: Request, job_id: str, user: PageUser) -> HTMLResponse | RedirectResponse:
    point = request.app.state.jobstore.get().get_time_point(job_id)
    if point is None:
        return render(request, "not_found.html", status_code=404,
                      what=f"follow-up of job {job_id} (it has not reached the follow-up step)")
    return RedirectResponse(f"/patients/{point.patient_key}", status_code=status.HTTP_303_SEE_OTHER)
