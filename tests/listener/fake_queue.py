"""A stand-in for ``neuroseg.worker.queue`` in listener subprocess tests.

It records each hand-off as one JSON line in ``<data dir>/handoffs.jsonl`` so a
test can count hand-offs across listener restarts. Use it by putting this
module in ``sys.modules['neuroseg.worker.queue']`` before running the CLI.
"""

from __future__ import annotations

import json
import os

from neuroseg.worker.contracts import StudyManifest


def enqueue_study(settings, manifest: StudyManifest) -> str:
    job_id = f"job-{manifest.study_instance_uid[-12:]}"
    line = json.dumps({"job_id": job_id, "manifest": manifest.to_dict()})
    with open(settings.data_dir / "handoffs.jsonl", "a") as log:
        log.write(line + "\n")
        log.flush()
        os.fsync(log.fileno())
    return job_id
