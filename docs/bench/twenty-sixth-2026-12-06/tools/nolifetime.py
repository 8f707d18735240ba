"""Run `healthscore` with asyncpg's statement-cache expiry timers off.

(`max_cached_statement_lifetime=0`, what store/db.py now sets; GCWRAP=1 adds gcwrap.py.)
"""

import os
import sys

import asyncpg

_orig = asyncpg.create_pool


def create_pool(*args, **kwargs):
    kwargs.setdefault("max_cached_statement_lifetime", 0)
    return _orig(*args, **kwargs)


asyncpg.create_pool = create_pool
if os.environ.get("GCWRAP"):
    sys.path.insert(0, os.path.dirname(__file__))
    import gcwrap  # noqa: F401  (patches the pacer)

if __name__ == "__main__":
    from healthscore.cli import main

    sys.exit(main(sys.argv[1:]))
