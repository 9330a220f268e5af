"""DICOM out: SEG, Parametric Maps, surface meshes, SR, and delivery to the PACS."""
