"""``neuroseg listen`` (the DICOM listener in the foreground) and ``neuroseg bench ingest``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from neuroseg.worker.settings import get_settings

log = logging.getLogger(__name__)

SHARED_REAL_MR = Path(__file__).resolve().parents[3] / "shared" / "data" / "real-dicom" / "ge-mr750-t1-mprage-axial"


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    """Add ``listen`` and ``bench ingest``."""
    listen = commands.add_parser(
        "listen",
        help="receive studies from a PACS over DICOM (C-ECHO, C-STORE) and queue complete ones",
        description="Run the DICOM listener in the foreground. SIGTERM or Ctrl-C lets open associations "
                    "finish, then stops; studies still open resume at the next start.",
    )
    listen.add_argument("--drain-seconds", type=float, default=30.0, metavar="S",
                        help="on stop, wait this long for open associations before aborting them (default 30)")
    listen.set_defaults(handler=run_listen)

    ingest = bench.add_parser(
        "ingest",
        help="instances/s of our listener (durable) against DCMTK storescp, sent by storescu",
    )
    ingest.add_argument("-n", "--instances", type=int, default=2000, metavar="N",
                        help="number of instances to send to each receiver (default 2000)")
    ingest.add_argument("--source", type=Path, default=None, metavar="DIR",
                        help="DICOM files to copy (default: the shared real GE MR series if present, "
                             "else pydicom's test MR file)")
    ingest.add_argument("--rounds", type=int, default=3, help="rounds per receiver; the median is reported (default 3)")
    ingest.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the report as JSON")
    ingest.add_argument("--associations", type=int, default=1, metavar="K",
                        help="send over K associations at once, to each receiver (default 1; a PACS often opens 2-4)")
    ingest.add_argument("--profile", type=Path, default=None, metavar="FILE",
                        help="profile the listener's threads with cProfile and write the report to FILE "
                             "(raw stats in FILE with suffix .pstats)")
    ingest.set_defaults(handler=run_bench_ingest)


def run_listen(args: argparse.Namespace) -> int:
    """Run the listener until SIGTERM/SIGINT; return the exit status."""
    from neuroseg.listener.classify import RulesError
    from neuroseg.listener.service import ListenerService
    from neuroseg.worker.cli import package_version

    settings = get_settings()
    _quiet_pynetdicom()
    log.info(
        "neuroseg %s listener starting: AE %s on %s:%d, data %s, TLS %s, allowed calling AEs %s",
        package_version(), settings.ae_title, settings.bind_address, settings.port, settings.data_dir,
        "on" if settings.tls_cert else "off", ",".join(settings.allowed_calling_aes) or "any",
    )
    if not settings.allowed_calling_aes:
        log.warning("NEUROSEG_ALLOWED_CALLING_AES is empty: any calling AE title is accepted; "
                    "list your PACS AE titles to restrict who may send")
    try:
        service = ListenerService(settings).start()
    except RulesError as exc:
        print(f"neuroseg listen: classification rules: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"neuroseg listen: cannot start: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("%s received: finishing open associations, then stopping", signal.Signals(signum).name)
        stop.set()

    previous = {number: signal.signal(number, request_stop) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        service.stop(drain_seconds=args.drain_seconds)
        for number, handler in previous.items():
            signal.signal(number, handler)
    return 0


def _quiet_pynetdicom() -> None:
    """pynetdicom logs every message at INFO; the listener logs its own decisions instead."""
    pynetdicom_log = logging.getLogger("pynetdicom")
    if pynetdicom_log.getEffectiveLevel() < logging.WARNING and not log.isEnabledFor(logging.DEBUG):
        pynetdicom_log.setLevel(logging.WARNING)


def run_bench_ingest(args: argparse.Namespace) -> int:
    """Run the ingest bench, print the table, write JSON; return the exit status."""
    _quiet_pynetdicom()
    from tqdm import tqdm

    from neuroseg.listener.bench import format_report, run_ingest_bench, write_json

    source = args.source
    if source is None:
        if SHARED_REAL_MR.is_dir():
            source = SHARED_REAL_MR
        else:
            from pydicom.data import get_testdata_file

            source = Path(get_testdata_file("MR_small.dcm"))
    if not source.exists():
        print(f"neuroseg bench ingest: --source {source} does not exist", file=sys.stderr)
        return 2
    with tqdm(total=args.instances, desc="building instances", unit="file") as bar:
        try:
            report = run_ingest_bench(source, args.instances, args.rounds, progress=bar.update,
                                      associations=args.associations, profile=args.profile)
        except (ValueError, RuntimeError) as exc:
            print(f"neuroseg bench ingest: {exc}", file=sys.stderr)
            return 2
    print(format_report(report))
    if args.json is not None:
        write_json(report, args.json)
    return 0
