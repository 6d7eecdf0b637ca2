"""Work stage: the worker that claims jobs from the queue and runs their steps (load, prior, read, register,
write outputs, QC)."""
