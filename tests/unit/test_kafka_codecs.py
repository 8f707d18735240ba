"""The batch decompressors stop at a size, and read what aiokafka's read."""

from __future__ import annotations

import resource
import struct
import subprocess
import sys

import aiokafka.codec as aiokafka_codec
import aiokafka.record.default_records as python_reader
import pytest
from aiokafka.record.legacy_records import LegacyRecordBatch, LegacyRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords

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


def _cut_in_half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _xerial_with_its_last_block_cut() -> bytes:
    """Kafka's xerial framing intact, its one block cut short (its size restated to fit).
    A frame cut anywhere fails the framing check first, a ValueError of this project's
    (`test_a_xerial_frame_whose_block_sizes_do_not_fit_is_refused`)."""
    block = _cut_in_half(bytes(aiokafka_codec.snappy_encode(BODY[:32768], False)))
    return b"\x82SNAPPY\x00" + struct.pack("!ii", 1, 1) + struct.pack("!i", len(block)) + block


@pytest.mark.parametrize(
    ("codec", "undecompressible"),
    [
        ("gzip", _cut_in_half(_encode("gzip", BODY))),
        ("snappy", _cut_in_half(bytes(aiokafka_codec.snappy_encode(BODY, False)))),
        ("snappy", _xerial_with_its_last_block_cut()),
        ("lz4", _cut_in_half(_encode("lz4", BODY))),
        ("zstd", _cut_in_half(_encode("zstd", BODY))),
    ],
    ids=["gzip", "snappy", "snappy-xerial", "lz4", "zstd"],
)
def test_bytes_that_do_not_decompress_still_fail_as_they_did(
    codec: str, undecompressible: bytes
) -> None:
    """The same exception, of the same type, as aiokafka's own decompressor raises on
    the same bytes (not `DecompressedTooLarge`, nor any other)."""
    with pytest.raises(Exception) as theirs:
        getattr(aiokafka_codec, f"{codec}_decode")(undecompressible)
    with pytest.raises(Exception) as ours:
        kafka_codecs.DECODERS[f"{codec}_decode"](undecompressible)
    assert type(ours.value) is type(theirs.value)
    assert str(ours.value) == str(theirs.value)


def test_snappy_in_kafkas_xerial_blocks() -> None:
    framed = bytes(aiokafka_codec.snappy_encode(BODY, xerial_compatible=True))
    assert kafka_codecs.snappy_decode(framed) == BODY
    with pytest.raises(DecompressedTooLarge):
        kafka_codecs.snappy_decode(framed, len(BODY) - 1)


_XERIAL_HEADER = b"\x82SNAPPY\x00" + struct.pack("!ii", 1, 1)
_A_BLOCK = bytes(aiokafka_codec.snappy_encode(b"x" * 100))


def _address_space_of_a_gibibyte() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


@pytest.mark.parametrize(
    "blocks",
    [
        struct.pack("!i", -4),  # back to its own size: the cursor never moved on
        struct.pack("!i", len(_A_BLOCK)) + _A_BLOCK + struct.pack("!i", -len(_A_BLOCK) - 8),
        struct.pack("!i", len(_A_BLOCK) + 1) + _A_BLOCK,  # past the frame's end
        struct.pack("!i", len(_A_BLOCK)) + _A_BLOCK + b"\x00\x00",  # a size cut short
    ],
    ids=["negative", "negative-after-a-block", "past-the-end", "size-cut-short"],
)
def test_a_xerial_frame_whose_block_sizes_do_not_fit_is_refused(blocks: bytes) -> None:
    """A hostile snappy batch of a few bytes (the broker stores it without decompressing)
    whose xerial block size was negative sent the reader back over the frame without
    end, collecting views until the process ran out of memory, with the event loop
    blocked. (Read in a child process of 1 GiB of address space, so that a regression
    fails with MemoryError instead of taking the machine.)"""
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from healthscore.service.kafka_codecs import snappy_decode; "
            "snappy_decode(bytes.fromhex(sys.argv[1]))",
            (_XERIAL_HEADER + blocks).hex(),
        ],
        env={"PYTHONPATH": ":".join(sys.path)},
        preexec_fn=_address_space_of_a_gibibyte,
        capture_output=True,
        text=True,
        check=False,
    )
    assert child.returncode == 1
    assert child.stderr.strip().splitlines()[-1].startswith("ValueError: snappy: xerial block")


def test_installed_into_aiokafkas_readers() -> None:
    kafka_codecs.install()
    for name, decode in kafka_codecs.DECODERS.items():
        assert getattr(python_reader, name) is decode


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4"])
def test_an_old_message_set_is_decompressed_within_the_limit_too(
    codec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker serves a log written in the old format (magic 0 or 1) as it was written,
    and aiokafka reads those message sets with readers of their own: a compressed one
    was decompressed whole by them."""
    monkeypatch.setattr(kafka_codecs, "MAX_DECOMPRESSED_BATCH_BYTES", len(BODY) - 1)
    attribute = getattr(LegacyRecordBatch, f"CODEC_{codec.upper()}")
    builder = LegacyRecordBatchBuilder(1, attribute, 1 << 30)
    builder.append(0, 1_700_000_000_000, b"key", BODY)
    kafka_codecs.install()
    message_set = MemoryRecords(bytes(builder.build())).next_batch()
    assert message_set is not None
    with pytest.raises(DecompressedTooLarge, match=f"{codec} batch decompresses"):
        list(message_set)
