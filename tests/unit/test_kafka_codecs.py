"""The batch decompressors stop at a size, and read what aiokafka's read."""

from __future__ import annotations

import aiokafka.codec as aiokafka_codec
import aiokafka.record.default_records as python_reader
import pytest

from healthscore.service import kafka_codecs
from healthscore.service.kafka_codecs import DecompressedTooLarge

BODY = b'{"event_id": "x", "quantity": 1}' * 20_000
CODECS = ("gzip", "snappy", "lz4", "zstd")


def _encode(codec: str, data: bytes) -> bytes:
    encode = getattr(aiokafka_codec, f"{codec}_encode")
    return bytes(encode(data))


@pytest.mark.parametrize("codec", CODECS)
def test_a_batch_within_the_limit_reads_as_aiokafka_reads_it(codec: str) -> None:
    decode = kafka_codecs.DECODERS[f"{codec}_decode"]
    compressed = _encode(codec, BODY)
    assert decode(compressed) == getattr(aiokafka_codec, f"{codec}_decode")(compressed) == BODY
    assert decode(compressed, len(BODY)) == BODY  # exactly at the limit


@pytest.mark.parametrize("codec", CODECS)
def test_a_batch_past_the_limit_is_refused_naming_it(codec: str) -> None:
    decode = kafka_codecs.DECODERS[f"{codec}_decode"]
    with pytest.raises(DecompressedTooLarge, match=f"{codec} batch decompresses to more than"):
        decode(_encode(codec, BODY), len(BODY) - 1)


@pytest.mark.parametrize("codec", CODECS)
def test_bytes_that_do_not_decompress_still_fail_as_they_did(codec: str) -> None:
    compressed = _encode(codec, BODY)
    with pytest.raises(Exception) as failed:
        kafka_codecs.DECODERS[f"{codec}_decode"](compressed[: len(compressed) // 2])
    assert not isinstance(failed.value, DecompressedTooLarge)


def test_snappy_in_kafkas_xerial_blocks() -> None:
    framed = bytes(aiokafka_codec.snappy_encode(BODY, xerial_compatible=True))
    assert kafka_codecs.snappy_decode(framed) == BODY
    with pytest.raises(DecompressedTooLarge):
        kafka_codecs.snappy_decode(framed, len(BODY) - 1)


def test_installed_into_aiokafkas_readers() -> None:
    kafka_codecs.install()
    for name, decode in kafka_codecs.DECODERS.items():
        assert getattr(python_reader, name) is decode
