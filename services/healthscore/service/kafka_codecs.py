"""Batch decompressors that stop at a size: a few compressed kilobytes are no licence
to allocate gigabytes.

A producer (broken or hostile) can send a record batch of a few kilobytes that
decompresses to gigabytes: zstd and lz4 frames of zeros compress about 30,000:1, gzip
about 1,000:1. The broker checks the compressed size against `max.message.bytes` and
serves the batch as sent, and aiokafka's readers decompress a whole batch in memory:
every replica that fetched it would run out of memory, restart, and fetch it again.

These decompressors are aiokafka's (`aiokafka.codec`), with the same libraries, but
raise `DecompressedTooLarge` once a batch's records pass `MAX_DECOMPRESSED_BATCH_BYTES`
(KAFKA_MAX_DECOMPRESSED_BATCH_BYTES), without holding more than that. `install` puts them
into aiokafka's record readers (the C extension's and the pure-Python ones, of v2
batches and of the old message sets, look them up as module globals); the tolerant
reader (`kafka_records`) uses them too. A batch past the limit then fails to read like a
batch whose bytes do not decompress: the consumer salvages it and dead-letters its
offsets as `corrupt_record`, naming the limit.
"""

from __future__ import annotations

import gzip
import importlib
import io
import struct
from collections.abc import Callable
from typing import Protocol

import cramjam

DEFAULT_MAX_DECOMPRESSED_BATCH_BYTES = 64 * 1024 * 1024
"""The most a batch's records may take decompressed, by default
(KAFKA_MAX_DECOMPRESSED_BATCH_BYTES). Far above any batch a producer writes with the
default `max.message.bytes` (1 MiB compressed, a few MiB of JSON decompressed), far
below what a replica can hold."""

MAX_DECOMPRESSED_BATCH_BYTES = DEFAULT_MAX_DECOMPRESSED_BATCH_BYTES
"""The process's limit: set by `install` from the settings."""


def _limit(limit: int | None) -> int:
    # read when called, so that a test can lower it
    return MAX_DECOMPRESSED_BATCH_BYTES if limit is None else limit


class DecompressedTooLarge(ValueError):
    """A compressed batch holds more than `MAX_DECOMPRESSED_BATCH_BYTES`."""

    def __init__(self, codec: str, limit: int) -> None:
        super().__init__(
            f"{codec} batch decompresses to more than {limit} bytes "
            "(KAFKA_MAX_DECOMPRESSED_BATCH_BYTES): not decompressed"
        )


def gzip_decode(payload: bytes, limit: int | None = None) -> bytes:
    limit = _limit(limit)
    with gzip.GzipFile(fileobj=io.BytesIO(payload), mode="r") as gzipper:
        data = gzipper.read(limit + 1)  # reads in chunks: never more than this held
    if len(data) > limit:
        raise DecompressedTooLarge("gzip", limit)
    return data


def snappy_decode(payload: bytes, limit: int | None = None) -> bytes:
    """Raw snappy, or Kafka's xerial framing of raw snappy blocks; each block states
    its decompressed length up front, so the total is known before decompressing."""
    limit = _limit(limit)
    view = memoryview(payload)
    if bytes(view[:8]) == _XERIAL_MAGIC and len(view) >= 16:
        blocks = []
        cursor = 16
        while cursor < len(view):
            if cursor + 4 > len(view):
                raise ValueError(f"snappy: xerial block size cut short at byte {cursor}")
            (size,) = struct.unpack_from("!i", view, cursor)
            cursor += 4
            # a negative size would send the cursor back (a loop without end)
            if size < 0 or cursor + size > len(view):
                raise ValueError(
                    f"snappy: xerial block of {size} bytes at byte {cursor - 4} "
                    f"does not fit the {len(view)}-byte frame"
                )
            blocks.append(view[cursor : cursor + size])
            cursor += size
    else:
        blocks = [view]
    if sum(cramjam.snappy.decompress_raw_len(block) for block in blocks) > limit:
        raise DecompressedTooLarge("snappy", limit)
    return b"".join(bytes(cramjam.snappy.decompress_raw(block)) for block in blocks)


_XERIAL_MAGIC = b"\x82SNAPPY\x00"


def lz4_decode(payload: bytes, limit: int | None = None) -> bytes:
    return _into(cramjam.lz4.decompress_into, "lz4", payload, _limit(limit))


def zstd_decode(payload: bytes, limit: int | None = None) -> bytes:
    return _into(cramjam.zstd.decompress_into, "zstd", payload, _limit(limit))


def _into(
    decompress_into: Callable[[bytes, bytearray], int], codec: str, payload: bytes, limit: int
) -> bytes:
    """Decompress into a buffer that grows (doubling) up to `limit` + 1 bytes: cramjam
    refuses to write past a buffer's end ("failed to write whole buffer")."""
    size = min(limit + 1, max(8 * len(payload), 1 << 16))
    while True:
        out = bytearray(size)
        try:
            written = decompress_into(payload, out)
        except cramjam.DecompressionError as exc:
            if _FULL not in str(exc):
                raise  # not decompressible at all
            if size > limit:
                raise DecompressedTooLarge(codec, limit) from None
            size = min(limit + 1, 2 * size)
            continue
        if written > limit:
            raise DecompressedTooLarge(codec, limit)
        del out[written:]
        return bytes(out)


_FULL = "failed to write whole buffer"


class Decode(Protocol):
    def __call__(self, payload: bytes, limit: int | None = None) -> bytes: ...


DECODERS: dict[str, Decode] = {
    "gzip_decode": gzip_decode,
    "snappy_decode": snappy_decode,
    "lz4_decode": lz4_decode,
    "zstd_decode": zstd_decode,
}

# aiokafka's record readers, C and pure Python, and the decompressors each calls: v2
# batches (every codec), and the message sets of magic 0 and 1 that a broker still
# serves from a log written in the old format (no zstd there)
_READERS: dict[str, tuple[str, ...]] = {
    "aiokafka.record._crecords.default_records": tuple(DECODERS),
    "aiokafka.record.default_records": tuple(DECODERS),
    "aiokafka.record._crecords.legacy_records": ("gzip_decode", "snappy_decode", "lz4_decode"),
    "aiokafka.record.legacy_records": ("gzip_decode", "snappy_decode", "lz4_decode"),
}


def install(limit: int | None = None) -> None:
    """Make aiokafka's record readers decompress with these, within `limit` bytes a batch
    (None: the limit as it is; idempotent); fails loudly if a reader no longer calls its
    decompressors by these names."""
    global MAX_DECOMPRESSED_BATCH_BYTES
    if limit is not None:
        MAX_DECOMPRESSED_BATCH_BYTES = limit
    for name, functions in _READERS.items():
        try:
            module = importlib.import_module(name)
        except ImportError:  # the C extension is optional
            continue
        for function in functions:
            if not hasattr(module, function):
                raise RuntimeError(
                    f"{name} has no {function}: batch decompression cannot be capped"
                )
            setattr(module, function, DECODERS[function])
