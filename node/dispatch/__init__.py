"""Dispatch stage: deliver a job's result files to its destinations (claim, send, retry) through the
destination kinds of :mod:`node.dispatch.destinations`."""
