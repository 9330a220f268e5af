"""``neuroseg worker``, ``neuroseg serve``, ``neuroseg demo``, ``neuroseg send`` and ``neuroseg prune``.

- ``worker`` runs one Celery worker (one job at a time per GPU) and, in its
  main process, the maintenance loop that publishes lost jobs again and
  prunes old data.
- ``serve`` runs the listener, a worker (a child process) and the admin app
  together: the single-machine setup, with the embedded broker by default.
  SIGINT/SIGTERM stop it cleanly (the listener finishes its associations, the
  worker its job or hands it back).
- ``demo`` makes a synthetic glioma study, sends it to a running ``serve`` (or
  starts one for the demo), follows the job and says where the results are.
- ``send`` is a small C-STORE client for DICOM files and folders.
- ``prune`` applies the retention rules now.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from neuroseg.worker.settings import DicomDestination, DicomWebDestination, Settings, get_settings, parse_destination

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL_S = 60.0
PRUNE_INTERVAL_S = 6 * 3600.0


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add ``worker``, ``serve``, ``demo``, ``send`` and ``prune``."""
    worker = commands.add_parser("worker", help="run a worker that processes queued studies")
    worker.add_argument("--device", help="cpu, cuda or cuda:N (default: NEUROSEG_DEVICE, auto)")
    worker.add_argument("--concurrency", type=int, default=1,
                        help="jobs at once (keep 1 per GPU; each process loads the model once)")
    worker.add_argument("--pool", choices=["prefork", "solo"], default="prefork",
                        help="prefork: jobs run in a child process (time limits, survives a crashed job); "
                             "solo: in the worker process itself")
    worker.add_argument("--name", default=None, help="worker node name (default neuroseg-<device>@<host>)")
    worker.set_defaults(handler=run_worker)

    serve = commands.add_parser("serve", help="run listener, worker and admin app together (one machine)")
    serve.add_argument("--device", help="device for the worker (default: NEUROSEG_DEVICE, auto)")
    serve.add_argument("--no-admin", action="store_true", help="do not start the admin web app")
    serve.add_argument("--shutdown-timeout", type=float, default=30.0,
                       help="seconds to wait for the running job on shutdown before handing it back")
    serve.set_defaults(handler=run_serve)

    demo = commands.add_parser("demo", help="send a synthetic glioma study through the whole service")
    demo.add_argument("--seed", type=int, default=7, help="phantom seed")
    demo.add_argument("--spacing", type=float, default=3.0,
                      help="phantom voxel size in mm (3 keeps the demo fast on a small CPU)")
    demo.add_argument("--mc-samples", type=int, default=4,
                      help="MC dropout passes when the demo starts its own service (the service default is 20)")
    demo.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the result")
    demo.add_argument("--keep-running", action="store_true",
                      help="keep the service the demo started running afterwards (to open the admin app)")
    demo.set_defaults(handler=run_demo)

    send = commands.add_parser("send", help="send DICOM files or folders by C-STORE or DICOMweb STOW-RS")
    send.add_argument("paths", nargs="+", type=Path, help="DICOM files or folders (searched recursively)")
    send.add_argument("--to", required=True, type=parse_destination, metavar="AET@HOST:PORT|URL",
                      help="a DICOM destination or a DICOMweb base URL (https://host/dicom-web)")
    send.set_defaults(handler=run_send)

    prune = commands.add_parser("prune", help="remove spool data and encoded copies past NEUROSEG_RETENTION_DAYS")
    prune.add_argument("--dry-run", action="store_true", help="only report what would be removed")
    prune.set_defaults(handler=run_prune)


# --- worker -------------------------------------------------------------------------------------


def _apply_device(device: str | None) -> Settings:
    if device:
        # exported so that the worker's child processes build the same settings
        os.environ["NEUROSEG_DEVICE"] = device
        get_settings.cache_clear()
    return get_settings()


class Maintenance:
    """Background loop of a worker's main process: publish lost jobs again, prune old data."""

    def __init__(self, settings: Settings, interval: float = MAINTENANCE_INTERVAL_S) -> None:
        self.settings, self.interval = settings, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="neuroseg-maintenance", daemon=True)
        self._last_prune = 0.0

    def start(self) -> "Maintenance":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def run_once(self) -> None:
        from neuroseg.worker.queue import recover_lost_jobs
        from neuroseg.worker.retention import prune

        try:
            recover_lost_jobs(self.settings)
        except Exception:  # noqa: BLE001 - the loop must survive a database hiccup
            log.exception("recovering lost jobs failed; trying again in %.0f s", self.interval)
        if time.monotonic() - self._last_prune > PRUNE_INTERVAL_S:
            self._last_prune = time.monotonic()
            try:
                prune(self.settings)
            except Exception:  # noqa: BLE001
                log.exception("retention pass failed")

    def _run(self) -> None:
        while True:
            self.run_once()
            if self._stop.wait(self.interval):
                return


def _device_problem(device: str) -> str | None:
    """Why ``device`` cannot be used, or None. Asked in a child process: CUDA must not be
    initialised in the worker's main process, whose pool children are forked from it."""
    if not device.startswith("cuda"):
        return None
    index = int(device.partition(":")[2] or 0)
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                           capture_output=True, text=True, timeout=120)
    count = int(probe.stdout.strip() or 0) if probe.returncode == 0 else 0
    if index >= count:
        return (f"device {device} is not available ({count} CUDA device(s) visible); "
                "use --device cpu, or auto to take a GPU when there is one")
    return None


def run_worker(args: argparse.Namespace) -> int:
    """Start a Celery worker on the configured broker; returns when it shuts down."""
    from neuroseg.worker.cli import package_version
    from neuroseg.worker.jobstore import JobStore
    from neuroseg.worker.queue import QUEUE_NAME, broker_description, get_celery_app

    if args.concurrency < 1:
        print("neuroseg worker: --concurrency must be at least 1", file=sys.stderr)
        return 2
    settings = _apply_device(args.device)
    problem = _device_problem(settings.device)
    if problem:
        print(f"neuroseg worker: {problem}", file=sys.stderr)
        return 2
    store = JobStore.from_settings(settings)  # creates or upgrades the schema before any job
    device = settings.device
    log.info("neuroseg %s worker: broker %s, job store %s, device %s, %s pool x%d", package_version(),
             broker_description(settings), store.engine.url.render_as_string(hide_password=True), device,
             args.pool, args.concurrency)
    if device.startswith("cuda") and args.concurrency > 1:
        log.warning("%d jobs at once on one GPU share its memory; one worker per GPU with --concurrency 1 "
                    "is the tested setup", args.concurrency)
    app = get_celery_app(settings)
    maintenance = Maintenance(settings, interval=min(MAINTENANCE_INTERVAL_S, settings.job_stale_seconds)).start()
    name = args.name or f"neuroseg-{device.replace(':', '')}@{socket.gethostname()}"
    argv = ["worker", f"--pool={args.pool}", f"--concurrency={args.concurrency}",
            f"--loglevel={logging.getLevelName(logging.getLogger().level)}", "-Q", QUEUE_NAME,
            "--without-gossip", "--without-mingle", f"--hostname={name}"]
    try:
        app.worker_main(argv)
    finally:
        maintenance.stop()
    return 0


# --- serve ----------------------------------------------------------------------------------------


def _worker_command(device: str | None) -> list[str]:
    command = [sys.executable, "-m", "neuroseg.worker",
               "--log-level", logging.getLevelName(logging.getLogger().level), "worker"]
    if device:
        command += ["--device", device]
    return command


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to send SIGTERM when the parent dies (no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class ServeStack:
    """The listener, a worker child process and the admin app, started and stopped together."""

    def __init__(self, settings: Settings, *, device: str | None = None, admin: bool = True,
                 worker_env: dict[str, str] | None = None, shutdown_timeout: float = 30.0,
                 worker_log: Path | None = None) -> None:
        self.settings, self.device, self.admin = settings, device, admin
        self.worker_env = worker_env or {}
        self.worker_log = worker_log
        self.shutdown_timeout = shutdown_timeout
        self.listener = None
        self.worker: subprocess.Popen | None = None
        self.admin_server = None
        self._admin_thread: threading.Thread | None = None
        self.admin_url: str | None = None

    def start(self) -> "ServeStack":
        from neuroseg.listener.service import ListenerService
        from neuroseg.worker.jobstore import JobStore
        from neuroseg.worker.queue import enqueue_study

        store = JobStore.from_settings(self.settings)
        self.start_worker()

        def record(kind: str, message: str, study_instance_uid: str) -> None:
            store.record_event(kind, message, study_instance_uid=study_instance_uid)

        self.listener = ListenerService(self.settings, enqueue=enqueue_study, on_event=record).start()
        if self.admin:
            self._start_admin()
        return self

    def start_worker(self) -> None:
        env = dict(os.environ, **self.worker_env)
        # its own session: a Ctrl+C reaches serve only, which then stops the worker in order;
        # and it dies with serve (Linux parent-death signal), never left running alone
        output = None
        if self.worker_log is not None:
            self.worker_log.parent.mkdir(parents=True, exist_ok=True)
            output = open(self.worker_log, "ab")  # noqa: SIM115 - the child keeps it open
        self.worker = subprocess.Popen(_worker_command(self.device), env=env, start_new_session=True,
                                       preexec_fn=_die_with_parent, stdout=output, stderr=output)
        if output is not None:
            output.close()
        log.info("worker started (pid %d)", self.worker.pid)

    def _start_admin(self) -> None:
        try:
            import uvicorn

            from neuroseg.worker.web.app import create_app
        except ImportError as exc:
            log.warning("admin app not available (%s); running without it", exc)
            return
        config = uvicorn.Config(create_app(self.settings), host=self.settings.admin_host,
                                port=self.settings.admin_port, log_level="warning", lifespan="on")
        self.admin_server = uvicorn.Server(config)
        # signals are handled by serve, not by uvicorn
        self.admin_server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._admin_thread = threading.Thread(target=self.admin_server.run, name="neuroseg-admin", daemon=True)
        self._admin_thread.start()
        host = "127.0.0.1" if self.settings.admin_host in ("0.0.0.0", "::") else self.settings.admin_host
        self.admin_url = f"http://{host}:{self.settings.admin_port}"
        log.info("admin app on %s", self.admin_url)

    def supervise(self) -> None:
        """Restart the worker if it died (called in the serve loop)."""
        if self.worker is not None and self.worker.poll() is not None:
            log.error("the worker exited with status %s; starting a new one", self.worker.returncode)
            self.start_worker()

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.stop(drain_seconds=10)
            self.listener = None
        if self.admin_server is not None:
            self.admin_server.should_exit = True
            if self._admin_thread is not None:
                self._admin_thread.join(10)
            self.admin_server = None
        if self.worker is not None and self.worker.poll() is None:
            self.worker.terminate()  # Celery warm shutdown: finish the current job
            try:
                self.worker.wait(self.shutdown_timeout)
            except subprocess.TimeoutExpired:
                log.warning("the worker did not finish its job in %.0f s; stopping it (the job is resumed "
                            "at the next start)", self.shutdown_timeout)
                self.worker.kill()
                self.worker.wait(10)
        self.worker = None


def run_serve(args: argparse.Namespace) -> int:
    """Run listener + worker + admin app until SIGINT/SIGTERM."""
    from neuroseg.worker.cli import package_version
    from neuroseg.worker.queue import broker_description

    settings = _apply_device(args.device)
    if not args.no_admin:
        from neuroseg.worker.settings import SettingsError
        from neuroseg.worker.web.auth import check_admin_token

        try:  # refuse before anything starts, as `neuroseg admin` does
            check_admin_token(settings.admin_token.get_secret_value() if settings.admin_token else None)
        except SettingsError as exc:
            print(f"neuroseg: configuration error: {exc}", file=sys.stderr)
            return 2
    log.info("neuroseg %s serve: AE %s on port %d, broker %s, data in %s", package_version(),
             settings.ae_title, settings.port, broker_description(settings), settings.data_dir.resolve())
    stop = threading.Event()

    def handle_signal(number: int, _frame: object) -> None:
        log.info("received %s; shutting down", signal.Signals(number).name)
        stop.set()

    previous = {sig: signal.signal(sig, handle_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    stack = ServeStack(settings, device=args.device, admin=not args.no_admin,
                       shutdown_timeout=args.shutdown_timeout)
    try:
        try:
            stack.start()
        except OSError as exc:
            print(f"neuroseg serve: cannot start the DICOM listener on port {settings.port}: {exc} "
                  "(is another neuroseg or PACS using it? set NEUROSEG_PORT)", file=sys.stderr)
            return 2
        destinations = ", ".join(str(item) for item in settings.destinations) or f"outbox {settings.outbox_dir}"
        print(f"neuroseg is running: DICOM AE {settings.ae_title} on port {settings.port}; results to "
              f"{destinations}" + (f"; admin app {stack.admin_url}" if stack.admin_url else ""), flush=True)
        while not stop.wait(1.0):
            stack.supervise()
    finally:
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


# --- send ---------------------------------------------------------------------------------------------


def send_files(paths: Sequence[Path], destination: DicomDestination | DicomWebDestination, settings: Settings,
               calling_ae_title: str | None = None, progress: bool = False) -> tuple[int, list[str]]:
    """Send DICOM files (or every file under folders) by C-STORE or STOW-RS; return (stored count, error lines).

    The presentation contexts come from the files themselves, so compressed
    files are sent as they are (``dicom_out.send``).
    """
    from neuroseg.dicom_out.send import DeliveryUnavailable, load_objects
    from neuroseg.worker.delivery import send_objects

    objects = load_objects(paths)
    bar = None
    if progress:
        from tqdm import tqdm

        how = "STOW-RS" if isinstance(destination, DicomWebDestination) else "C-STORE"
        bar = tqdm(total=len(objects), desc=f"{how} to {destination}", unit="file")
    try:
        results = send_objects(objects, destination, settings, calling_ae_title=calling_ae_title,
                               on_result=(lambda _: bar.update()) if bar else None)
    except DeliveryUnavailable as exc:
        stored = sum(item.ok for item in exc.results)
        return stored, [f"{exc} (is it running, and does it accept us?)"]
    finally:
        if bar is not None:
            bar.close()
    errors = [f"{item.kind}: {item.message}" for item in results if not item.ok]
    return len(results) - len(errors), errors


def run_send(args: argparse.Namespace) -> int:
    settings = get_settings()
    try:
        stored, errors = send_files(args.paths, args.to, settings, progress=True)
    except (FileNotFoundError, ValueError) as exc:
        print(f"neuroseg send: {exc}", file=sys.stderr)
        return 2
    for line in errors[:20]:
        print(f"  failed: {line}", file=sys.stderr)
    print(f"{stored} file(s) stored at {args.to}" + (f", {len(errors)} failed" if errors else ""))
    return 0 if not errors else 1


# --- prune ------------------------------------------------------------------------------------------


def run_prune(args: argparse.Namespace) -> int:
    from neuroseg.worker.retention import prune

    settings = get_settings()
    report = prune(settings, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb}: spool data of {len(report.studies_removed)} studies, encoded copies of "
          f"{len(report.job_outputs_removed)} jobs, {report.broker_messages_removed} broker messages "
          f"({report.bytes_freed / 1e6:.1f} MB)")
    if report.kept_undelivered:
        print(f"kept {len(report.kept_undelivered)} studies whose results were not delivered "
              "(failed or cancelled jobs; retry or cancel them in the admin app)")
    return 0


# --- demo ---------------------------------------------------------------------------------------------


def run_demo(args: argparse.Namespace) -> int:
    """See :mod:`neuroseg.worker.demo`."""
    from neuroseg.worker.demo import run

    return run(args)
