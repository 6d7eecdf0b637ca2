"""TotalRegistrator registration engine: images in, transform out (no DICOM)."""
