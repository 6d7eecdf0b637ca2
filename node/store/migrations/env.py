"""Alembic environment of the node database.

Run through :mod:`node.store.migrate` (``totalreg db upgrade``, ``Database(url)`` at start-up): the caller passes
an open connection in ``config.attributes["connection"]`` already inside its transaction and holding the upgrade
lock. Offline (``--sql``) it renders SQL for ``config.get_main_option("sqlalchemy.url")``. SQLite uses batch mode
(``render_as_batch``) because it cannot ALTER most things in place.
"""
from __future__ import annotations

from alembic import context

from node.store.db import Base, make_engine  # node.store.db imports every table onto its Base

config = context.config


def _options(dialect_name: str) -> dict:
    return {"target_metadata": Base.metadata, "render_as_batch": dialect_name == "sqlite",
            "compare_type": True, "compare_server_default": True}


def run_migrations_offline() -> None:
    """Print the SQL of the requested upgrade for the configured URL's dialect (nothing is executed)."""
    from sqlalchemy.engine import make_url
    url = config.get_main_option("sqlalchemy.url")
    context.configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"},
                      **_options(make_url(url).get_backend_name()))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on the caller's connection (or on a fresh engine for ``sqlalchemy.url``)."""
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, **_options(connection.dialect.name))
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    try:
        with engine.connect() as conn:
            context.configure(connection=conn, **_options(conn.dialect.name))
            with context.begin_transaction():
                context.run_migrations()
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
