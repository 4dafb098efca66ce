"""The hub: ingests terminals' journal batches, stores them, verifies chains, acknowledges.

* :mod:`sync.hub.store` — :class:`HubStore` and its SQLite implementation.
* :mod:`sync.hub.pgstore` — ``PgHubStore``, PostgreSQL shared by several hubs (needs
  psycopg, so it is not imported here).
* :mod:`sync.hub.service` — :class:`Hub`, the MQTT ingest service.
* :mod:`sync.hub.cli` — ``ykt hub run | export | report``.
"""

from sync.hub.service import Hub
from sync.hub.store import HubStore, SqliteHubStore

__all__ = ["Hub", "HubStore", "SqliteHubStore"]
