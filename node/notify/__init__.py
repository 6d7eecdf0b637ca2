"""Notifications: node events (job outcomes, node health) delivered to webhooks (signed JSON) and e-mail.

* :mod:`node.store.notify_outbox` — the durable outbox: ``notify_events`` (one row per event, written in the same
  transaction as the job change that caused it) and ``notify_deliveries`` (one row per event and target:
  pending → delivered | failed, attempts, next attempt, last error).
* :mod:`node.notify.delivery` — signing, the delivery loop with exponential back-off, the node health watch.
* :mod:`node.web.notifications` — the console page ``/notifications`` (admins).

The outbox tables and their job hook are the store's (:mod:`node.store.db` imports them, so every process that
changes a job writes its event); this package sits above the store, beside the worker and the dispatcher.
"""
