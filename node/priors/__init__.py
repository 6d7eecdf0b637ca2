"""Priors stage: choose the prior study of the same patient, locally or on the PACS (C-FIND, C-MOVE/C-GET); the
dry run (which rule, series and prior a study would get, nothing retrieved)."""
