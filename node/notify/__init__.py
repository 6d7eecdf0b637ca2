"""Notifications: node events (job outcomes, node health) delivered to webhooks (signed JSON) and e-mail.

* :mod:`node.notify.models` — the durable outbox: ``notify_events`` (one row per event, written in the same
  transaction as the job change that caused it) and ``notify_deliveries`` (one row per event and target:
  pending → delivered | failed, attempts, next attempt, last error).
* :mod:`node.notify.delivery` — signing, the delivery loop with exponential back-off, the node health watch.
* :mod:`node.notify.web` — the console page ``/notifications`` (admins).

This package's ``__init__`` imports nothing so that :mod:`node.store.db` can import the models without a cycle.
"""
