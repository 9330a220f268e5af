"""Small helpers every stage may use; this package imports no stage of neuroseg."""
