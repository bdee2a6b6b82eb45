"""Runs in every Ray worker of tests/batch/test_cluster.py (Ray's ``worker_process_setup_hook``): the
stand-in for a node that dies. When the file named by $HIRES_NST_TEST_CRASH says so, the worker
rendering that job exits on the spot (``os._exit``, no clean-up, as a power cut or the OOM killer
would) at the given stage and iteration, once: the marker file it leaves says it already died."""

from __future__ import annotations

import json
import os
from pathlib import Path

ENV = "HIRES_NST_TEST_CRASH"


def install() -> None:
    import hires_nst.batch.job as batch_job
    from hires_nst.events import Step

    real = batch_job.render

    def render(job, sink):
        plan = _plan()
        if plan is None or job.output.stem != plan["job"]:
            return real(job, sink)
        marker = Path(plan["marker"])

        def dying(event) -> None:
            sink(event)
            if (isinstance(event, Step) and event.stage == plan["stage"] and event.iteration >= plan["iteration"]
                    and not marker.exists()):
                marker.write_text(str(os.getpid()))
                os._exit(1)

        return real(job, dying)

    batch_job.render = render


def _plan() -> dict | None:
    path = os.environ.get(ENV)
    try:
        return json.loads(Path(path).read_text()) if path else None
    except OSError:
        return None
