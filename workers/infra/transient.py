"""Which errors are transient infrastructure faults, worth retrying, and which are not.

Transient: the database or broker went away or is restarting (a dropped socket, PostgreSQL's
admin shutdown or "cannot connect now"), a transaction lost a deadlock or serialization race, a
lock wait or statement timed out, the server ran out of connections. Anything else (a constraint
violation, bad data, a bug) fails the same way every time: retrying it only delays the failure.
"""

from __future__ import annotations

import asyncpg
from asyncpg import exceptions as pg

TRANSIENT: tuple[type[BaseException], ...] = (
    pg.PostgresConnectionError, asyncpg.InterfaceError, pg.TransactionRollbackError, pg.OperatorInterventionError,
    pg.InsufficientResourcesError, pg.LockNotAvailableError, OSError, ConnectionError, TimeoutError,
)


def describe(exc: BaseException) -> str:
    """``Type: message`` of an error that fails a chunk or a job."""
    return f"{type(exc).__name__}: {exc}"
