"""Every Kafka client of the service, built here with the cluster's security settings.

This is the only module that constructs aiokafka producers, consumers and admin
clients and FastStream brokers (tests/unit/test_kafka_clients.py checks every
other module of the package), so `KAFKA_SECURITY_PROTOCOL`, SASL and TLS apply
to all of them: the service's consumer (through the FastStream broker), the
outbox/DLQ producer, topic creation, the lag probe of the gauges and of
`healthscore lag`, replay, the simulator, the demo and the benchmark.

Callers pass the options of their use (acks, group, fetch sizes, ...); the
connection options (bootstrap servers, security protocol, TLS context, SASL
credentials) come from `KafkaConnection` only and cannot be overridden.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from faststream.kafka import KafkaBroker
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512
from pydantic import SecretStr

from healthscore.config import KafkaSaslMechanism, KafkaSecurityProtocol, Settings
from healthscore.service import kafka_codecs
from healthscore.tls import client_ssl_context

# what only the connection decides
CONNECTION_OPTIONS = frozenset(
    {
        "bootstrap_servers",
        "security_protocol",
        "ssl_context",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
        "security",
    }
)

log = structlog.get_logger(__name__)

_FASTSTREAM_SASL: dict[str, type[SASLPlaintext | SASLScram256 | SASLScram512]] = {
    "PLAIN": SASLPlaintext,
    "SCRAM-SHA-256": SASLScram256,
    "SCRAM-SHA-512": SASLScram512,
}


@dataclass(frozen=True, eq=False)
class KafkaSecurity:
    """How clients authenticate and encrypt: protocol, SASL credentials, TLS context."""

    protocol: KafkaSecurityProtocol = "PLAINTEXT"
    sasl_mechanism: KafkaSaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.uses_tls and self.ssl_context is None:
            raise ValueError(f"security protocol {self.protocol} needs a TLS context")
        if self.uses_sasl and (
            self.sasl_mechanism is None or self.sasl_username is None or self.sasl_password is None
        ):
            raise ValueError(f"security protocol {self.protocol} needs SASL mechanism and login")

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaSecurity:
        s = settings
        protocol = s.kafka_security_protocol
        context = None
        if protocol in ("SSL", "SASL_SSL"):
            context = client_ssl_context(
                cafile=s.kafka_ssl_cafile,
                certfile=s.kafka_ssl_certfile,
                keyfile=s.kafka_ssl_keyfile,
                key_password=s.kafka_ssl_key_password,
            )
        sasl = protocol in ("SASL_PLAINTEXT", "SASL_SSL")
        return cls(
            protocol=protocol,
            sasl_mechanism=s.kafka_sasl_mechanism if sasl else None,
            sasl_username=s.kafka_sasl_username if sasl else None,
            sasl_password=s.kafka_sasl_password if sasl else None,
            ssl_context=context,
        )

    def client_options(self) -> dict[str, Any]:
        """The keyword arguments of an aiokafka producer, consumer or admin client."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.ssl_context is not None:
            options["ssl_context"] = self.ssl_context
        if self.uses_sasl:
            assert self.sasl_password is not None
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password.get_secret_value()
        return options

    def faststream(self) -> BaseSecurity | None:
        """The same as a FastStream security object (None: PLAINTEXT)."""
        if self.uses_sasl:
            assert self.sasl_mechanism is not None and self.sasl_username is not None
            assert self.sasl_password is not None
            return _FASTSTREAM_SASL[self.sasl_mechanism](
                self.sasl_username,
                self.sasl_password.get_secret_value(),
                ssl_context=self.ssl_context,
                use_ssl=self.uses_tls,
            )
        if self.uses_tls:
            return BaseSecurity(ssl_context=self.ssl_context, use_ssl=True)
        return None


@dataclass(frozen=True, eq=False)
class KafkaConnection:
    """A cluster to connect to (bootstrap servers + security) and the clients for it."""

    bootstrap_servers: str
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    # the most a fetched batch may take decompressed, for the whole process: aiokafka's
    # readers find their decompressors as module globals (kafka_codecs; None: as it is)
    max_decompressed_batch_bytes: int | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, bootstrap_servers: str | None = None
    ) -> KafkaConnection:
        """The configured cluster; `bootstrap_servers` replaces KAFKA_BOOTSTRAP_SERVERS."""
        bootstrap = bootstrap_servers or settings.kafka_bootstrap_servers
        if bootstrap is None:
            raise ValueError("KAFKA_BOOTSTRAP_SERVERS is not set")
        return cls(
            bootstrap,
            KafkaSecurity.from_settings(settings),
            settings.kafka_max_decompressed_batch_bytes,
        )

    def _options(self, options: dict[str, Any]) -> dict[str, Any]:
        fixed = CONNECTION_OPTIONS.intersection(options)
        if fixed:
            raise TypeError(
                f"{', '.join(sorted(fixed))}: connection options come from the settings"
            )
        return {"bootstrap_servers": self.bootstrap_servers, **self.security.client_options()}

    def producer(self, **options: Any) -> AIOKafkaProducer:
        return AIOKafkaProducer(**self._options(options), **options)

    def consumer(self, *topics: str, **options: Any) -> AIOKafkaConsumer:
        # whatever reads records decompresses within the limit
        kafka_codecs.install(self.max_decompressed_batch_bytes)
        return AIOKafkaConsumer(*topics, **self._options(options), **options)

    def admin(self, **options: Any) -> AIOKafkaAdminClient:
        return AIOKafkaAdminClient(**self._options(options), **options)

    def broker(self, **options: Any) -> KafkaBroker:
        """A FastStream broker: its consumers, producer and admin client get the security."""
        self._options(options)
        kafka_codecs.install(self.max_decompressed_batch_bytes)
        return KafkaBroker(self.bootstrap_servers, security=self.security.faststream(), **options)


async def stop_producer(producer: AIOKafkaProducer, flush_within: float) -> None:
    """Stop `producer`, waiting at most `flush_within` for what it has not sent yet.

    aiokafka's own `stop` waits until every queued record is acknowledged or expires
    (its request timeout), and only then closes: with the broker away that outlasted
    a pod's grace period. Nothing is lost by giving up on them: each of the
    service's publishers (the alert and dead-letter relays, the health feed) marks a
    record done in PostgreSQL only once the broker acknowledged it, so what is left
    here is published by the next process.
    """
    stopping = asyncio.ensure_future(producer.stop())
    done, _ = await asyncio.wait([stopping], timeout=flush_within)
    if done:
        stopping.result()  # what it raised, as before
        return
    stopping.cancel()
    log.warning("producer_stopped_unflushed", waited_seconds=flush_within)
    # the sender first (a batch failed under a running sender is put back in a queue
    # it is no longer in), then the connections: a request in flight ends with them
    sender = producer._sender.sender_task
    if sender is not None:
        sender.cancel()
    await producer.client.close()
    if sender is not None:
        ended, _ = await asyncio.wait([sender], timeout=1.0)
        if ended and not sender.cancelled():
            sender.exception()  # retrieved: the stop has been logged already
