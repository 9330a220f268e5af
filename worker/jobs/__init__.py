"""The job store's parts: states, tables and migrations, and one module per concern.

:class:`neuroseg.worker.jobstore.JobStore` puts them together; import from there.
"""
