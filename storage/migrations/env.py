"""Alembic environment: storage.db.migrate() passes the connection in.

To write a new migration after changing storage/tables.py:
    alembic -c storage/alembic.ini revision --autogenerate -m "what changed"
"""

from alembic import context

from storage.tables import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    from storage.db import get_engine  # an `alembic` command line run

    connection = get_engine().connect()

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
