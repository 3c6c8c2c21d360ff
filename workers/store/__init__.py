"""The PostgreSQL store: one :class:`Store` per process over an asyncpg pool."""

from workers.store.core import Store, open_store, text_hash, upgrade

__all__ = ["Store", "open_store", "text_hash", "upgrade"]
