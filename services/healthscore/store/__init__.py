"""PostgreSQL access: named SQL, `$n` parameters, set-based batch writes."""

from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# what both a plain connection and a pooled one offer
Connection = asyncpg.Connection[Any] | PoolConnectionProxy[Any]
