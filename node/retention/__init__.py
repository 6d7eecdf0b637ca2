"""Retention: what the node deletes, when, and how it stays consistent (``retention:`` in node.yaml).

* :mod:`node.retention.usage`   how much the node holds: the spool from the index (``SUM(studies.size_bytes)``, kept
  up to date by the receiver), job results from a per-job size cache (each results folder measured once), and the
  spool's file system (one ``statvfs``); no spool walk per tick.
* :mod:`node.retention.policy`  what is eligible, oldest first: age limits per kind of data, then the disk watermarks;
  never what a queued or running job, an undelivered send or a pending late-instance follow-up needs.
* :mod:`node.retention.purge`   one purge: plan + mark rows in one transaction, delete files, delete rows, one event
  with counts and bytes; a crash anywhere in between is finished by :func:`node.retention.purge.repair` at start-up.
* :mod:`node.retention.check`   walks the index and the disk and reports every mismatch (``totalreg check``).
* :mod:`node.retention.runner`  the periodic purge of ``totalreg serve`` and the status file the console reads.
"""
