"""Receive stage: the DICOM listener (C-STORE SCP) and its processes, part 10 files, the spool and the index
writer. Data in: associations from modalities/PACS; data out: spooled files and index rows (node.store)."""
