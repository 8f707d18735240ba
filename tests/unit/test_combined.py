"""`combine` renumbers each statement's parameters after the ones before it."""

from __future__ import annotations

from healthscore.store import sql
from healthscore.store.combined import combine


def test_parameters_follow_on_in_order() -> None:
    statement, args = combine(
        [
            ("INSERT INTO a SELECT * FROM unnest($1::int[], $2::text[])", [[1], ["x"]]),
            ("UPDATE b SET v = $2 WHERE k = $1 AND w = $12", ["k", "v", *range(10)]),
            ("DELETE FROM c WHERE id = ANY($1)", [[7]]),
        ]
    )
    assert statement == (
        "WITH w0 AS (\nINSERT INTO a SELECT * FROM unnest($1::int[], $2::text[])\n),\n"
        "w1 AS (\nUPDATE b SET v = $4 WHERE k = $3 AND w = $14\n),\n"
        "w2 AS (\nDELETE FROM c WHERE id = ANY($15)\n)\nSELECT 1"
    )
    assert args == [[1], ["x"], "k", "v", *range(10), [7]]


def test_a_hot_path_statement_keeps_its_own_numbering_first() -> None:
    statement, _ = combine([(sql.SAVE_OFFSETS, ["g", [], [], [], []])])
    assert "$1 AND" in statement and "$5::timestamptz[]" in statement
