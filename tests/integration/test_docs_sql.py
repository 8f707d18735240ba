"""The SQL the operations guide gives the on-call engineer, run against the schema.

A runbook's query that names a column or table the migrations renamed fails at 3 a.m.,
when it is needed. Every statement of docs/operations.md (its `sql` blocks, the `psql
-c` of its shell blocks, and the statements written inline) is planned on a migrated
database, as a superuser, in a transaction rolled back: EXPLAIN for a query or a
write (nothing runs), the statement itself for DDL. A placeholder the guide writes
for the reader to fill in is replaced by a value of its type.
"""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg
import pytest

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operations.md"

# what the guide leaves for the reader to fill in -> a value of that type
PLACEHOLDERS = {
    "'<user_profiles id>'": "'00000000-0000-0000-0000-000000000000'",
    "'...'": "'00000000-0000-0000-0000-000000000000'",
    "'<token>'": "'not-a-token'",
    "'<hex>'": "'00'",
    "<pid>": "0",
    "<old>": "0",
    "<operator login>": "CURRENT_USER",
}

# written to show a form, not to be run
ILLUSTRATIONS = {
    "SELECT ... FROM shadow_alerts s JOIN churn_labels l USING (organization_id)",
    "SELECT app_login(token)",
}


def guide_statements() -> list[str]:
    text = GUIDE.read_text()
    found: list[str] = []
    fenced = re.compile(r"^ *```(\w*)\n(.*?)^ *```", re.S | re.M)
    for language, block in fenced.findall(text):
        if language == "sql":
            found.append(block)
        elif language == "bash":
            found.extend(re.findall(r'psql [^\n]*?-c "(.*?)"', block, re.S))
    inline = fenced.sub("", text)
    found.extend(re.findall(r"`((?:SELECT|UPDATE|INSERT|DELETE|WITH)\b[^`]*)`", inline))
    statements = []
    for piece in found:
        piece = re.sub(r"--[^\n]*", "", piece)
        for statement in piece.split(";"):
            statement = " ".join(statement.split())
            if statement and statement not in ILLUSTRATIONS:
                statements.append(statement)
    return statements


def runnable(statement: str) -> str:
    for placeholder, value in PLACEHOLDERS.items():
        statement = statement.replace(placeholder, value)
    assert not re.search(r"<[\w ]+>|\.\.\.", statement), f"a placeholder to add: {statement}"
    return statement


def test_the_guide_has_its_statements_found() -> None:
    statements = guide_statements()
    assert len(statements) >= 25
    assert any("dead_letters_withheld" in s for s in statements)


@pytest.mark.parametrize("statement", guide_statements())
async def test_each_statement_of_the_guide_plans_on_the_schema(
    migrated_database: str, statement: str
) -> None:
    conn = await asyncpg.connect(migrated_database)
    try:
        transaction = conn.transaction()
        await transaction.start()
        try:
            sql = runnable(statement)
            if re.match(r"(SELECT|UPDATE|INSERT|DELETE|WITH)\b", sql):
                sql = "EXPLAIN " + sql
            await conn.execute(sql)
        finally:
            await transaction.rollback()
    finally:
        await conn.close()
