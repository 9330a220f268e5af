"""The pages take their stage steps from the job store's one declared stage order."""

from __future__ import annotations

import html
import json
import re

from neuroseg.worker.jobstore import STAGE_ORDER, TIMED_STEPS


def test_pages_carry_the_stage_order_of_the_job_store(client, jobs):
    for path in ("/", f"/jobs/{jobs.done}"):
        page = client.get(path).text
        stages = re.search(r'data-stages="([^"]*)"', page).group(1)
        steps = re.search(r'data-timed-steps="([^"]*)"', page).group(1)
        assert json.loads(html.unescape(stages)) == [stage.value for stage in STAGE_ORDER]
        assert json.loads(html.unescape(steps)) == [step.value for step in TIMED_STEPS]
