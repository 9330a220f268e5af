"""``neuroseg demo``: one synthetic glioma study through the whole service.

1. Generate a phantom (real MNI152 anatomy with a planted glioma, see
   :mod:`neuroseg.model.phantom`) and write it as four DICOM MR series
   (T1, T2, FLAIR, T1ce) with realistic headers.
2. Use the ``neuroseg serve`` answering C-ECHO on ``NEUROSEG_PORT``, or start
   listener + worker (+ admin app) for the demo, with a short assembly wait and
   few MC dropout passes so it finishes in minutes on a small CPU (it says so).
3. Send the study by C-STORE, follow the job with a progress bar, and print
   where the results are (outbox folder or PACS) and the admin URL of the job.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

from neuroseg.worker.settings import DicomDestination, Settings, get_settings, load_settings

log = logging.getLogger(__name__)

DEMO_CALLING_AE = "NEUROSEG-DEMO"
DEMO_STABLE_SECONDS = 3.0


def echo(settings: Settings, host: str = "127.0.0.1", timeout: float = 3.0) -> bool:
    """Whether a DICOM service answers C-ECHO as ``settings.ae_title`` on ``settings.port``."""
    from neuroseg.dicom_out.send import Peer
    from neuroseg.dicom_out.send import echo as c_echo

    if _port_free(settings.port, host):
        return False  # nothing listens: no need to ask (and no connection errors in the log)
    return c_echo(Peer(settings.ae_title, host, settings.port, calling_ae_title=_calling_ae(settings),
                       timeout=timeout)) is not None


def _calling_ae(settings: Settings) -> str:
    return settings.allowed_calling_aes[0] if settings.allowed_calling_aes else DEMO_CALLING_AE


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex((host, port)) != 0


def make_demo_study(out_dir: Path, seed: int, spacing_mm: float) -> tuple[str, dict[str, list[Path]]]:
    """Write a phantom as four MR series under ``out_dir``; return (StudyInstanceUID, files per role)."""
    from neuroseg.dicom_out.mr_series import StudyIdentity, write_study_from_nifti
    from neuroseg.model.phantom import PhantomConfig, make_phantom, write_brats_case

    config = PhantomConfig(anatomy_spacing_mm=spacing_mm, output_spacing_mm=spacing_mm, skull_probability=1.0,
                           clinical_grid_probability=0.0, multifocal_probability=0.0,
                           no_enhancement_probability=0.0, no_necrosis_probability=0.0)
    phantom = make_phantom(seed, config)
    case = write_brats_case(phantom, out_dir / "nifti", "demo")
    case = Path(case)
    paths = {role: next(case.glob(f"*_{key}.nii*")) for role, key in
             (("T1", "t1"), ("T1ce", "t1ce"), ("T2", "t2"), ("FLAIR", "flair"))}
    identity = StudyIdentity(patient_name="Demo^Glioma", patient_id="NEUROSEG-DEMO",
                             uid_seed=f"neuroseg-demo-{seed}-{time.time_ns()}",
                             study_description="MR BRAIN TUMOUR (synthetic demo phantom)")
    written = write_study_from_nifti(paths, out_dir / "dicom", identity)
    return identity.resolved_study_instance_uid, written


def wait_for_job(settings: Settings, study_instance_uid: str, since: float, timeout: float) -> str | None:
    """Follow the study's job with a progress bar; return its id once it ended (None on timeout)."""
    from datetime import UTC, datetime

    from tqdm import tqdm

    from neuroseg.worker.jobstore import FINAL_STATES, STAGE_ORDER, JobState, JobStore

    store = JobStore.from_settings(settings)
    started = datetime.fromtimestamp(since, UTC)
    deadline = time.monotonic() + timeout
    bar = tqdm(total=100 * len(STAGE_ORDER), desc="waiting for the study to be complete", unit="",
               bar_format="{desc:<44} {percentage:3.0f}%|{bar}| {elapsed}", mininterval=1.0)
    job_id = None
    try:
        while time.monotonic() < deadline:
            jobs = [job for job in store.list_jobs(study_instance_uid=study_instance_uid) if job.created_at >= started]
            if jobs:
                job = jobs[0]
                job_id = job.id
                state = JobState(job.state)
                if state in FINAL_STATES:
                    bar.n = bar.total
                    bar.set_description(f"job {state.value}")
                    bar.refresh()
                    return job_id
                if state in STAGE_ORDER:
                    bar.n = int(100 * STAGE_ORDER.index(state) + job.percent)
                    bar.set_description(f"{state.value}: {job.message[:34]}")
                else:
                    bar.set_description(f"{state.value}: {job.message[:34]}")
                bar.refresh()
            time.sleep(0.5)
    finally:
        bar.close()
    return None if job_id is None else job_id


def run(args: argparse.Namespace) -> int:
    """The ``neuroseg demo`` command."""
    from neuroseg.worker.cli.worker_commands import ServeStack, send_files
    from neuroseg.worker.jobstore import JobStore

    settings = get_settings()
    running = echo(settings)
    stack = None
    if running:
        print(f"using the neuroseg service answering on port {settings.port} (AE {settings.ae_title}); "
              f"its settings apply (MC samples, destinations); the study is complete after "
              f"{settings.stable_seconds:.0f} s without new images")
    else:
        if not _port_free(settings.port):
            print(f"neuroseg demo: port {settings.port} is in use by something that does not answer C-ECHO as "
                  f"{settings.ae_title}; set NEUROSEG_PORT to a free port", file=sys.stderr)
            return 2
        overrides = {"stable_seconds": DEMO_STABLE_SECONDS, "max_wait_seconds": max(settings.max_wait_seconds, 60.0)}
        settings = load_settings(**overrides)
        admin = _port_free(settings.admin_port)
        print(f"starting listener + worker{' + admin app' if admin else ''} for the demo (data in "
              f"{settings.data_dir.resolve()}); demo shortcuts: {args.mc_samples} MC dropout passes instead of "
              f"{settings.mc_samples}, a {args.spacing:g} mm phantom, {DEMO_STABLE_SECONDS:g} s assembly wait")
        worker_log = settings.data_dir / "logs" / "demo-worker.log"
        print(f"the demo's worker logs to {worker_log}")
        stack = ServeStack(settings, admin=admin, shutdown_timeout=10.0, worker_log=worker_log, worker_env={
            "NEUROSEG_MC_SAMPLES": str(args.mc_samples),
            "NEUROSEG_STABLE_SECONDS": str(DEMO_STABLE_SECONDS),
        })
    try:
        with tempfile.TemporaryDirectory(prefix="neuroseg-demo-") as scratch:
            print(f"1/3 generating a synthetic glioma study (seed {args.seed}, {args.spacing:g} mm) ...", flush=True)
            study_uid, written = make_demo_study(Path(scratch), args.seed, args.spacing)
            counts = ", ".join(f"{role} {len(files)} slices" for role, files in written.items())
            print(f"    four MR series: {counts}")
            if stack is not None:
                stack.start()
            since = time.time() - 1
            print(f"2/3 sending the study by C-STORE to {settings.ae_title}@127.0.0.1:{settings.port} ...", flush=True)
            destination = DicomDestination(ae_title=settings.ae_title, host="127.0.0.1", port=settings.port)
            stored, errors = send_files([Path(scratch) / "dicom"], destination, settings, _calling_ae(settings))
            if errors:
                print(f"neuroseg demo: {len(errors)} files were not stored: {errors[0]}", file=sys.stderr)
                return 1
            print(f"    {stored} images stored")
        print("3/3 processing (assembly, loading, inference with uncertainty and Grad-CAM, encoding, delivery)",
              flush=True)
        job_id = wait_for_job(settings, study_uid, since, args.timeout)
        if job_id is None:
            print(f"neuroseg demo: no result after {args.timeout:.0f} s; see the worker log", file=sys.stderr)
            return 1
        status = _report(JobStore.from_settings(settings).get_job(job_id), settings, stack)
        if stack is not None and getattr(args, "keep_running", False):
            _serve_until_interrupted(stack)
        return status
    finally:
        if stack is not None:
            stack.stop()


def _serve_until_interrupted(stack) -> None:  # noqa: ANN001
    import signal
    import threading

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    print("the demo service keeps running (listener, worker, admin app); press Ctrl+C to stop it", flush=True)
    try:
        while not stop.wait(1.0):
            stack.supervise()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _report(job, settings: Settings, stack) -> int:  # noqa: ANN001
    print()
    print(f"job {job.id}: {job.state}" + (f" ({job.error})" if job.error else ""))
    if job.volumes_ml:
        volumes = ", ".join(f"{key.upper()} {value:.1f} mL" for key, value in sorted(job.volumes_ml.items()))
        print(f"tumour volumes: {volumes}")
    if job.model_name:
        print(f"model: {job.model_name} {job.model_version} on {job.device}; sequences used: "
              f"{', '.join(job.sequences_used)}")
    timings = ", ".join(f"{stage.name} {stage.duration_s:.1f} s" for stage in job.stages if stage.duration_s)
    if timings:
        print(f"stages: {timings}")
    kinds = sorted({output.kind.split('-')[0] for output in job.outputs})
    print(f"outputs: {len(job.outputs)} DICOM objects ({', '.join(kinds)})")
    for delivery in job.deliveries:
        where = delivery.destination.removeprefix("outbox:")
        print(f"  {'outbox folder' if delivery.destination.startswith('outbox:') else 'sent to'} {where}: "
              f"{delivery.status}, {delivery.sent} objects")
    admin = f"http://{'127.0.0.1' if settings.admin_host in ('0.0.0.0', '::') else settings.admin_host}:" \
            f"{settings.admin_port}/jobs/{job.id}"
    login = "" if settings.admin_token is not None else " (set NEUROSEG_ADMIN_TOKEN to log in and see patient data)"
    if stack is None or stack.admin_url is None:
        print(f"admin page of the job: {admin}{login}")
    else:
        print(f"admin page of the job (with `neuroseg demo --keep-running`, or `neuroseg serve` on the same data "
              f"folder): {admin}{login}")
    print("the model output is research software, not for diagnostic use")
    return 0 if job.state in ("done", "partial") else 1
