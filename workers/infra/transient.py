"""Which errors are transient infrastructure faults, worth retrying, and which are not.

Transient: the database or broker went away or is restarting (a dropped socket, a missing unix
socket while PostgreSQL restarts, its admin shutdown or "cannot connect now", a read-only server
during a failover), a transaction lost a deadlock or serialization race, a lock wait or statement
timed out, the server ran out of connections, or a migration changed a table under a prepared
statement (the next try prepares it again). Anything else (a constraint violation, bad data, a
file that is not there, a bug) fails the same way every time: retrying it only delays the failure
and hides its message.
"""

from __future__ import annotations

import functools

import asyncpg
from asyncpg import exceptions as pg

TRANSIENT: tuple[type[BaseException], ...] = (
    pg.PostgresConnectionError, asyncpg.InterfaceError, pg.TransactionRollbackError, pg.OperatorInterventionError,
    pg.InsufficientResourcesError, pg.LockNotAvailableError, pg.ReadOnlySQLTransactionError,
    pg.InvalidCachedStatementError, pg.OutdatedSchemaCacheError, OSError, ConnectionError, TimeoutError,
)
# inside asyncpg's InterfaceError family: the caller's or the data's errors, not the link's
CLIENT_ERRORS: tuple[type[BaseException], ...] = (
    pg._base.DataError, pg._base.ClientConfigurationError, pg._base.UnsupportedClientFeatureError,
    pg._base.UnsupportedServerFeatureError,
)
_FILE_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
# asyncpg raises its bare InterfaceError both for a link that is gone and for misuse of a connection
# (another operation in progress on it, a statement given the wrong number of arguments, a cursor
# outside a transaction): only the first kind is retried
_LINK_GONE = ("connection is closed", "pool is closing", "pool is closed")


class PermanentError(Exception):
    """An error of a retried class that a retry would not fix (see :func:`permanent_unless_transient`)."""


def is_transient(exc: BaseException) -> bool:
    """Whether a retry may succeed where this attempt failed. A file error that names its file is
    not (a missing model or input stays missing); one that names none is a socket's (asyncpg
    connecting to a unix socket that a restarting PostgreSQL has not created yet)."""
    if isinstance(exc, CLIENT_ERRORS):
        return False
    if isinstance(exc, _FILE_ERRORS) and exc.filename is not None:
        return False
    if type(exc) is asyncpg.InterfaceError:
        return any(m in str(exc) for m in _LINK_GONE)
    return isinstance(exc, TRANSIENT)


def permanent_unless_transient(fn):
    """Wrap a task body so that an error of a retried class (``TRANSIENT``, which Celery's
    ``autoretry_for`` matches by class) that :func:`is_transient` says a retry would not fix fails
    the task at once, as :class:`PermanentError` (the original chained), instead of being retried
    for as long as it lasts (the stage and finalize tasks set no retry cap)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TRANSIENT as exc:
            if is_transient(exc):
                raise
            raise PermanentError(describe(exc)) from exc
    return run


def describe(exc: BaseException) -> str:
    """``Type: message`` of an error that fails a chunk or a job."""
    return f"{type(exc).__name__}: {exc}"
