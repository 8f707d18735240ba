"""Every Kafka client goes through `healthscore.service.kafka_clients`, with the security settings.

No connection is made: the clients are built (aiokafka wants a running loop for
that, hence the async tests) and their connection options inspected.
"""

from __future__ import annotations

import ast
import ssl
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import InvalidReplicationFactorError
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512
from pydantic import SecretStr

import healthscore
import healthscore_lab
from healthscore.config import Settings
from healthscore.service.app import ServiceOptions, build
from healthscore.service.broker import build_broker
from healthscore.service.kafka_admin import COMPACTED, new_topics, raise_topic_errors
from healthscore.service.kafka_clients import KafkaConnection, KafkaSecurity
from healthscore.service.kafka_salvage import (
    CorruptRecordMonitor,
    SalvagingConsumer,
    salvaging_builder,
)
from healthscore.service.ops.lag import HighWatermarkProbe
from healthscore.service.ops.metrics import Metrics
from tests.utils.tls import Issued, issue, make_ca, trusted_subjects

PACKAGE = Path(healthscore.__file__).parent
FACTORY = PACKAGE / "service" / "kafka_clients.py"
# extends the consumer FastStream builds from the factory's options (connection and
# security); test_the_salvaging_consumer_keeps_the_factory_options proves it keeps them
EXTENSIONS = {PACKAGE / "service" / "kafka_salvage.py"}
LAB = Path(healthscore_lab.__file__).parent
CLIENT_CLASSES = frozenset(
    {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient", "AIOKafkaClient", "KafkaBroker"}
)
PASSWORD = "s3cr3t-sasl-password"
KEY_PASSWORD = "s3cr3t-key-password"
BOOTSTRAP = "kafka-1:9093,kafka-2:9093"


# --------------------------------------------------------------------------- the scan


def client_constructions(source: str) -> list[tuple[int, str]]:
    """Lines that build a Kafka client (or hand its class to something that will).

    Any use of a client class outside an annotation or an import counts: a call,
    `functools.partial(AIOKafkaConsumer, ...)`, an alias (`import ... as P`).
    """
    tree = ast.parse(source)
    names = set(CLIENT_CLASSES)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom | ast.Import):
            for alias in node.names:
                if alias.name.rsplit(".", 1)[-1] in CLIENT_CLASSES and alias.asname:
                    names.add(alias.asname)
    in_annotation: set[int] = set()
    for node in ast.walk(tree):
        annotations: list[ast.expr | None] = []
        if isinstance(node, ast.AnnAssign | ast.arg):
            annotations.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            annotations.append(node.returns)
        for annotation in annotations:
            if annotation is not None:
                in_annotation.update(id(n) for n in ast.walk(annotation))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if id(node) in in_annotation:
            continue
        if isinstance(node, ast.Name) and node.id in names:
            found.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute) and node.attr in CLIENT_CLASSES:
            found.append((node.lineno, node.attr))
    return sorted(found)


def test_the_scan_finds_direct_constructions_in_every_form() -> None:
    source = """
import aiokafka
from functools import partial
from aiokafka import AIOKafkaProducer as Producer
from faststream.kafka import KafkaBroker

def typed(p: Producer) -> KafkaBroker:
    x: aiokafka.AIOKafkaConsumer | None = None
    return KafkaBroker("h")

a = Producer(bootstrap_servers="h")
b = aiokafka.AIOKafkaConsumer("t")
c = partial(aiokafka.AIOKafkaAdminClient, bootstrap_servers="h")
"""
    assert client_constructions(source) == [
        (9, "KafkaBroker"),
        (11, "Producer"),
        (12, "AIOKafkaConsumer"),
        (13, "AIOKafkaAdminClient"),
    ]


def test_no_module_but_the_factory_builds_a_kafka_client() -> None:
    offenders = {
        str(path.relative_to(PACKAGE.parent)): hits
        for path in sorted([*PACKAGE.rglob("*.py"), *LAB.rglob("*.py")])
        if path != FACTORY
        and path not in EXTENSIONS
        and (hits := client_constructions(path.read_text()))
    }
    assert offenders == {}, (
        "build Kafka clients with healthscore.service.kafka_clients.KafkaConnection"
    )
    # and the factory itself is where they are built
    assert {name for _, name in client_constructions(FACTORY.read_text())} >= {
        "AIOKafkaProducer",
        "AIOKafkaConsumer",
        "AIOKafkaAdminClient",
        "KafkaBroker",
    }


# --------------------------------------------------------------------------- the clients


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Issued, Issued]:
    """A test CA and a client certificate it signed, with an encrypted key."""
    directory = tmp_path_factory.mktemp("kafka-pki")
    ca = make_ca(directory, "healthscore kafka test CA")
    return ca, issue(ca, directory, "healthscore-client", key_password=KEY_PASSWORD)


def _settings(**values: Any) -> Settings:
    return Settings(_env_file=None, kafka_bootstrap_servers=BOOTSTRAP, **values)


def _scram512(pki: tuple[Issued, Issued]) -> Settings:
    ca, client = pki
    return _settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="healthscore",
        kafka_sasl_password=PASSWORD,
        kafka_ssl_cafile=ca.cert,
        kafka_ssl_certfile=client.cert,
        kafka_ssl_keyfile=client.key,
        kafka_ssl_key_password=KEY_PASSWORD,
    )


async def _producer_client(kafka: KafkaConnection, **options: Any) -> Any:
    """The aiokafka client of a producer built (never started) by the factory."""
    producer = kafka.producer(**options)
    await producer.stop()  # nothing to close: keeps aiokafka's "unclosed" warning away
    return producer.client


def _assert_verifies_with_test_ca(context: ssl.SSLContext) -> None:
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    # only the configured CA is trusted, not the system store
    assert trusted_subjects(context) == [{"commonName": "healthscore kafka test CA"}]


def _assert_scram512(client: Any) -> None:
    """An aiokafka client (`AIOKafkaClient`) set up for SASL_SSL / SCRAM-SHA-512."""
    servers = client._bootstrap_servers  # FastStream passes a list
    assert (",".join(servers) if isinstance(servers, list) else servers) == BOOTSTRAP
    assert client._security_protocol == "SASL_SSL"
    assert client._sasl_mechanism == "SCRAM-SHA-512"
    assert client._sasl_plain_username == "healthscore"
    assert client._sasl_plain_password == PASSWORD
    _assert_verifies_with_test_ca(client._ssl_context)


async def test_every_client_carries_sasl_ssl_scram_sha_512(pki: tuple[Issued, Issued]) -> None:
    settings = _scram512(pki)
    kafka = KafkaConnection.from_settings(settings)

    _assert_scram512(await _producer_client(kafka, acks="all", enable_idempotence=True))
    consumer = kafka.consumer("t", group_id="g", enable_auto_commit=False)
    _assert_scram512(consumer._client)
    await consumer.stop()
    admin = kafka.admin()
    _assert_scram512(admin._client)
    probe = HighWatermarkProbe(kafka)  # the gauges, `healthscore lag`, replay
    _assert_scram512(probe._consumer._client)
    await probe._consumer.stop()

    # the service: its producer and its FastStream broker (consumer, producer, admin)
    # as the composition root wires them (built, nothing opened)
    service = build(
        settings.model_copy(update={"database_url": SecretStr("postgresql://u@db.invalid/d")}),
        ServiceOptions(),
        ops_port=0,
    )
    _assert_scram512(service.producer.client)
    await service.producer.stop()  # never started: keeps aiokafka's "unclosed" warning away
    broker = service.broker
    options = broker._connection_kwargs  # what its producer and admin client get
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "healthscore"
    assert options["sasl_plain_password"] == PASSWORD
    _assert_verifies_with_test_ca(options["ssl_context"])
    # the subscriber's consumer comes from this builder (rebuilt from the same options at start)
    subscriber_consumer = broker.config.broker_config.builder("t", group_id="g")
    _assert_scram512(subscriber_consumer._client)
    await subscriber_consumer.stop()


async def test_the_salvaging_consumer_keeps_the_factory_options(
    pki: tuple[Issued, Issued],
) -> None:
    settings = _scram512(pki)
    broker = build_broker(settings, BOOTSTRAP)
    builder = broker.config.broker_config.builder
    built: list[SalvagingConsumer] = []
    salvaging = salvaging_builder(
        builder, CorruptRecordMonitor(Metrics().corrupt_records), built.append
    )
    consumer = salvaging("t", group_id="g")
    assert isinstance(consumer, SalvagingConsumer)
    assert built == [consumer]  # handed to the offset protocol
    _assert_scram512(consumer._client)
    await consumer.stop()


@pytest.mark.parametrize(
    ("protocol", "mechanism", "security_class", "tls"),
    [
        ("SASL_SSL", "PLAIN", SASLPlaintext, True),
        ("SASL_SSL", "SCRAM-SHA-256", SASLScram256, True),
        ("SASL_SSL", "SCRAM-SHA-512", SASLScram512, True),
        ("SASL_PLAINTEXT", "SCRAM-SHA-512", SASLScram512, False),
        ("SSL", None, BaseSecurity, True),
    ],
)
async def test_protocols_and_mechanisms_reach_aiokafka_and_faststream(
    pki: tuple[Issued, Issued],
    protocol: str,
    mechanism: str | None,
    security_class: type[BaseSecurity],
    tls: bool,
) -> None:
    ca, _ = pki
    sasl: dict[str, Any] = (
        {
            "kafka_sasl_mechanism": mechanism,
            "kafka_sasl_username": "svc",
            "kafka_sasl_password": PASSWORD,
        }
        if mechanism
        else {}
    )
    files = {"kafka_ssl_cafile": ca.cert} if tls else {}
    kafka = KafkaConnection.from_settings(
        _settings(kafka_security_protocol=protocol, **sasl, **files)
    )
    client = await _producer_client(kafka)
    assert client._security_protocol == protocol
    assert (client._ssl_context is not None) is tls
    if mechanism:
        assert client._sasl_mechanism == mechanism
    security = kafka.security.faststream()
    assert type(security) is security_class
    options = kafka.broker()._connection_kwargs
    assert options["security_protocol"] == protocol
    assert options.get("sasl_mechanism") == mechanism


async def test_plaintext_by_default() -> None:
    kafka = KafkaConnection.from_settings(_settings())
    client = await _producer_client(kafka)
    assert client._security_protocol == "PLAINTEXT"
    assert client._ssl_context is None
    assert kafka.security.faststream() is None
    assert kafka.broker()._connection_kwargs.get("security_protocol", "PLAINTEXT") == "PLAINTEXT"


async def test_ssl_without_a_ca_file_trusts_the_system_store() -> None:
    kafka = KafkaConnection.from_settings(_settings(kafka_security_protocol="SSL"))
    context = (await _producer_client(kafka))._ssl_context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


async def test_connection_options_cannot_be_overridden_by_a_caller() -> None:
    kafka = KafkaConnection("kafka:9093", KafkaSecurity())
    for options in (
        {"bootstrap_servers": "elsewhere:9092"},
        {"security_protocol": "PLAINTEXT"},
        {"ssl_context": None},
        {"sasl_plain_password": "x"},
    ):
        with pytest.raises(TypeError, match="come from the settings"):
            kafka.producer(**options)
    with pytest.raises(TypeError, match="come from the settings"):
        kafka.broker(security=None)


def test_topics_are_created_with_the_replication_factor() -> None:
    settings = _settings(topic_replication_factor=3)
    topics = new_topics(["a", "b"], 12, settings.topic_replication_factor, {"b": COMPACTED})
    assert [(t.name, t.num_partitions, t.replication_factor) for t in topics] == [
        ("a", 12, 3),
        ("b", 12, 3),
    ]
    assert topics[1].topic_configs == {"cleanup.policy": "compact"}
    assert Settings(_env_file=None).topic_replication_factor == 1


def test_topic_errors_in_the_create_response_are_raised() -> None:
    # aiokafka hands per-topic errors back in the response instead of raising them
    fine = SimpleNamespace(
        topic_errors=[("a", 0, None), ("b", 36, "Topic with this name already exists.")]
    )
    raise_topic_errors(fine)
    too_few_brokers = SimpleNamespace(
        topic_errors=[
            ("a", 0, None),
            ("b", 38, "Replication factor: 3 larger than available brokers: 1."),
        ]
    )
    with pytest.raises(InvalidReplicationFactorError, match="creating topic b: Replication"):
        raise_topic_errors(too_few_brokers)


def test_secrets_stay_out_of_reprs(pki: tuple[Issued, Issued]) -> None:
    settings = _scram512(pki)
    kafka = KafkaConnection.from_settings(settings)
    for text in (
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        repr(kafka),
        repr(kafka.security),
        repr(kafka.security.faststream()),
    ):
        assert PASSWORD not in text
        assert KEY_PASSWORD not in text
