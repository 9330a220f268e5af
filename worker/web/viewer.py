"""Data endpoints of the 3D viewer and the locally served Plotly bundle.

Volumes and meshes are answered as gzip-compressed binary blobs (see
:mod:`neuroseg.worker.web.viewer_data`) with ``Content-Encoding: gzip``, so the
browser inflates them natively. The Plotly JavaScript bundle comes from the
installed PyPI ``plotly`` package (``plotly/package_data/plotly.min.js``), read
at run time: nothing is fetched from the internet.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
from functools import lru_cache
from importlib import resources
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import Response

from neuroseg.worker.web.auth import ApiUser
from neuroseg.worker.web.viewer_data import (
    MESH_NAMES,
    PRIOR_MESH,
    PRIOR_REGION,
    VOLUME_FILES,
    ResultFolder,
    ResultNotFound,
)

log = logging.getLogger(__name__)

router = APIRouter(tags=["3D viewer"])

BLOB_TYPE = "application/vnd.neuroseg.arrays"


@lru_cache(maxsize=1)
def plotly_bundle() -> tuple[bytes, bytes, str]:
    """(plain, gzipped, etag) of the plotly.js bundle shipped inside the ``plotly`` package."""
    path = resources.files("plotly") / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise FileNotFoundError(
            "plotly.min.js is missing from the installed 'plotly' package; reinstall neuroseg's dependencies"
        )
    plain = path.read_bytes()
    return plain, gzip.compress(plain, compresslevel=6, mtime=0), hashlib.sha256(plain).hexdigest()[:20]


def _accepts_gzip(request: Request) -> bool:
    return "gzip" in request.headers.get("accept-encoding", "").lower()


def _blob_response(request: Request, blob: bytes, cache: str = "private, max-age=3600") -> Response:
    headers = {"Cache-Control": cache, "Vary": "Accept-Encoding"}
    if _accepts_gzip(request):
        headers["Content-Encoding"] = "gzip"
        return Response(blob, media_type=BLOB_TYPE, headers=headers)
    return Response(gzip.decompress(blob), media_type=BLOB_TYPE, headers=headers)


@router.get("/vendor/plotly.min.js", include_in_schema=False)
def plotly_js(request: Request) -> Response:
    plain, compressed, etag = plotly_bundle()
    headers = {"Cache-Control": "public, max-age=86400", "ETag": f'"{etag}"', "Vary": "Accept-Encoding"}
    if request.headers.get("if-none-match") == f'"{etag}"':
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    if _accepts_gzip(request):
        return Response(compressed, media_type="text/javascript", headers={**headers, "Content-Encoding": "gzip"})
    return Response(plain, media_type="text/javascript", headers=headers)


def _result(request: Request, job_id: str) -> ResultFolder:
    store = request.app.state.jobstore.get()
    if store.job_state(job_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no job {job_id!r}")
    return request.app.state.results.get(job_id)


def _compared_prior(request: Request, job_id: str, result: ResultFolder) -> dict[str, Any] | None:
    """The prior the job was compared with, for the viewer; None without a comparison or its labels.

    The job store's follow-up record decides: labels left by an earlier run
    whose comparison did not happen again are not shown.
    """
    point = request.app.state.jobstore.get().get_time_point(job_id)
    if point is None or point.status != "compared" or not result.prior_labels_path().is_file():
        return None
    prior = (point.summary or {}).get("prior") or {}
    wt = ((point.summary or {}).get("regions") or {}).get("wt") or {}
    return {**PRIOR_REGION, "key": PRIOR_MESH, "job_id": point.prior_job_id,
            "study_date": prior.get("study_date", ""), "volume_ml": wt.get("prior_ml"),
            "registration": (point.summary or {}).get("registration")}


@router.get("/api/jobs/{job_id}/viewer/manifest", summary="What the 3D viewer of a job can show")
def viewer_manifest(request: Request, job_id: str, user: ApiUser) -> dict[str, Any]:
    """Grid (shape, LPS affine), available sequences and overlays, regions with volumes in mL.

    ``prior`` describes the compared prior study (null without one); its
    surface is then the mesh named ``prior``.
    """
    result = _result(request, job_id)
    manifest = result.manifest()
    manifest["job_id"] = job_id
    manifest["meshes"] = list(MESH_NAMES)
    manifest["prior"] = _compared_prior(request, job_id, result)
    return manifest


@router.get(
    "/api/jobs/{job_id}/viewer/volumes/{key}",
    summary="One volume as packed uint8 on the viewer grid (gzip)",
    response_class=Response,
)
def viewer_volume(request: Request, job_id: str, key: str, user: ApiUser) -> Response:
    if key not in VOLUME_FILES:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            detail=f"unknown volume {key!r}; known: {', '.join(VOLUME_FILES)}")
    result = _result(request, job_id)
    if key not in result.available():
        raise ResultNotFound(f"job {job_id} has no {VOLUME_FILES[key]}")
    return _blob_response(request, result.volume_blob(key))


@router.get(
    "/api/jobs/{job_id}/viewer/meshes/{name}",
    summary="One surface mesh, vertices in LPS mm with per-vertex uncertainty and Grad-CAM (gzip)",
    response_class=Response,
)
def viewer_mesh(request: Request, job_id: str, name: str, user: ApiUser) -> Response:
    """A surface; ``prior`` is the compared prior's whole tumour on this job's grid (404 without a comparison)."""
    if name not in (*MESH_NAMES, PRIOR_MESH):
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            detail=f"unknown mesh {name!r}; known: {', '.join((*MESH_NAMES, PRIOR_MESH))}")
    result = _result(request, job_id)
    if name == PRIOR_MESH and _compared_prior(request, job_id, result) is None:
        raise ResultNotFound(f"job {job_id} was not compared with a prior study")
    return _blob_response(request, result.mesh_blob(name))
