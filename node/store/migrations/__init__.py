"""Alembic migrations of the node database (env.py, script.py.mako, versions/); run by :mod:`node.store.migrate`."""
