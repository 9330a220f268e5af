"""What every part of the job store shares: the engine, sessions and single-row helpers."""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from neuroseg.worker.jobs.database import engine_for
from neuroseg.worker.jobs.tables import JobRow, as_utc


class StoreBase:
    """Sessions on the job store's database; the parts of :class:`JobStore` build on it.

    Parameters
    ----------
    url: str
        SQLAlchemy database URL; the schema is created or upgraded on first use.
    stale_after_s: float
        A running job whose heartbeat is older than this is considered
        abandoned (its worker died) and may be claimed again.
    """

    def __init__(self, url: str, stale_after_s: float = 120.0) -> None:
        self.url = url
        self.engine = engine_for(url)
        self.stale_after = timedelta(seconds=stale_after_s)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> Session:
        return self._sessions()

    @staticmethod
    def _get_row(session: Session, job_id: str) -> JobRow:
        row = session.get(JobRow, job_id)
        if row is None:
            raise KeyError(f"no job {job_id!r} in the job store")
        return row

    def _update(self, job_id: str, **values: Any) -> None:
        with self.session() as session:
            result = session.execute(update(JobRow).where(JobRow.id == job_id).values(**values))
            if result.rowcount != 1:
                raise KeyError(f"no job {job_id!r} in the job store")
            session.commit()

    def _abandoned(self, row: JobRow, now: datetime) -> bool:
        """The worker holding ``row`` is gone: no heartbeat for ``stale_after``, or a dead process here."""
        heartbeat = as_utc(row.heartbeat_at) or as_utc(row.updated_at)
        if heartbeat is None or now - heartbeat > self.stale_after:
            return True
        host, _, pid = row.worker.rpartition(":")
        if host == socket.gethostname() and pid.isdigit():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False
