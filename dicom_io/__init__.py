"""DICOM in and out for TotalRegistrator Node (no torch, no network)."""
