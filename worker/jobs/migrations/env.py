"""Alembic environment of the job store: runs on the connection handed over by ``migrate``.

There is no ``alembic.ini``: :func:`neuroseg.worker.jobs.database.alembic_config`
builds the configuration in code and passes the connection in ``attributes``.
"""

from alembic import context

from neuroseg.worker.jobs.tables import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
