"""DICOM in: associations, spool, study assembly, series classification."""
