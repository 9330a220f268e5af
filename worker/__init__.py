"""The job side of neuroseg: queue, tasks, pipeline, job store, settings, CLI, admin app."""
