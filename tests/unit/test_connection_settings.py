"""Kafka security and PostgreSQL TLS settings: combinations checked at load, TLS contexts."""

from __future__ import annotations

import ssl
from argparse import Namespace
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from healthscore.cli import settings_from_args
from healthscore.config import Settings
from healthscore.store.db import database_tls
from healthscore.store.dburl import redact
from tests.utils.tls import Issued, issue, make_ca, trusted_subjects


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Issued, Issued]:
    directory = tmp_path_factory.mktemp("settings-pki")
    ca = make_ca(directory, "healthscore settings test CA")
    return ca, issue(ca, directory, "client", key_password="key-pass")


def _settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def _problem(**values: Any) -> str:
    with pytest.raises(ValidationError) as info:
        _settings(**values)
    return str(info.value)


def test_environment_names_and_spellings(
    monkeypatch: pytest.MonkeyPatch, pki: tuple[Issued, Issued]
) -> None:
    ca, client = pki
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "b-1.example:9096",
        "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "KAFKA_SASL_MECHANISM": "scram-sha-512",
        "KAFKA_SASL_USERNAME": "healthscore",
        "KAFKA_SASL_PASSWORD": "sasl-pw-123",
        "KAFKA_SSL_CAFILE": str(ca.cert),
        "KAFKA_SSL_CERTFILE": str(client.cert),
        "KAFKA_SSL_KEYFILE": str(client.key),
        "KAFKA_SSL_KEY_PASSWORD": "key-pass",
        "TOPIC_REPLICATION_FACTOR": "3",
        "DATABASE_SSLMODE": "VERIFY-FULL",
        "DATABASE_SSLROOTCERT": str(ca.cert),
        "DATABASE_SSLCERT": str(client.cert),
        "DATABASE_SSLKEY": str(client.key),
        "DATABASE_SSLKEY_PASSWORD": "key-pass",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = _settings()
    assert (s.kafka_security_protocol, s.kafka_sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (
        s.kafka_sasl_password is not None
        and s.kafka_sasl_password.get_secret_value() == "sasl-pw-123"
    )
    assert s.kafka_ssl_cafile == ca.cert and s.kafka_ssl_keyfile == client.key
    assert s.topic_replication_factor == 3
    assert s.database_sslmode == "verify-full" and s.database_sslrootcert == ca.cert
    assert "sasl-pw-123" not in repr(s)  # SecretStr
    assert "key-pass" not in repr(s)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "PLAIN"},
            "KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD",
        ),
        (
            {
                "kafka_security_protocol": "SASL_SSL",
                "kafka_sasl_username": "u",
                "kafka_sasl_password": "p",
            },
            "KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_SASL_MECHANISM",
        ),
        (
            {"kafka_sasl_username": "u", "kafka_sasl_password": "p"},
            "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD set, but KAFKA_SECURITY_PROTOCOL=PLAINTEXT "
            "does not authenticate with SASL",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_sasl_mechanism": "SCRAM-SHA-256"},
            "KAFKA_SASL_MECHANISM set, but KAFKA_SECURITY_PROTOCOL=SSL",
        ),
        ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol"),
        ({"kafka_sasl_mechanism": "GSSAPI"}, "kafka_sasl_mechanism"),
        ({"database_sslmode": "prefer"}, "database_sslmode"),
        ({"topic_replication_factor": 0}, "topic_replication_factor"),
    ],
)
def test_inconsistent_kafka_settings_are_refused_with_the_variables_named(
    values: dict[str, Any], message: str
) -> None:
    assert message in _problem(**values)


def test_tls_files_need_a_protocol_or_mode_that_uses_them(pki: tuple[Issued, Issued]) -> None:
    ca, client = pki
    assert (
        "KAFKA_SSL_CAFILE set, but KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT does not use TLS"
        in _problem(
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism="PLAIN",
            kafka_sasl_username="u",
            kafka_sasl_password="p",
            kafka_ssl_cafile=ca.cert,
        )
    )
    assert "KAFKA_SSL_KEYFILE and KAFKA_SSL_KEY_PASSWORD need KAFKA_SSL_CERTFILE" in _problem(
        kafka_security_protocol="SSL", kafka_ssl_keyfile=client.key
    )
    assert "DATABASE_SSLROOTCERT set, but DATABASE_SSLMODE is unset" in _problem(
        database_sslrootcert=ca.cert
    )
    assert "DATABASE_SSLCERT set, but DATABASE_SSLMODE is disable" in _problem(
        database_sslmode="disable", database_sslcert=client.cert
    )
    assert "DATABASE_SSLKEY and DATABASE_SSLKEY_PASSWORD need DATABASE_SSLCERT" in _problem(
        database_sslmode="verify-full", database_sslkey=client.key
    )


def test_certificate_files_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    assert "kafka_ssl_cafile" in _problem(kafka_security_protocol="SSL", kafka_ssl_cafile=missing)
    assert "database_sslrootcert" in _problem(
        database_sslmode="verify-full", database_sslrootcert=missing
    )


def _ca_names(context: ssl.SSLContext) -> list[str]:
    return [subject["commonName"] for subject in trusted_subjects(context)]


def test_database_tls_per_mode(pki: tuple[Issued, Issued]) -> None:
    ca, client = pki
    assert database_tls(_settings()) is None  # the URL (or asyncpg's default) decides
    assert database_tls(_settings(database_sslmode="disable")) is False

    full = database_tls(_settings(database_sslmode="verify-full", database_sslrootcert=ca.cert))
    assert isinstance(full, ssl.SSLContext)
    assert full.verify_mode == ssl.CERT_REQUIRED and full.check_hostname
    assert _ca_names(full) == ["healthscore settings test CA"]  # only that CA is trusted

    chain_only = database_tls(_settings(database_sslmode="verify-ca", database_sslrootcert=ca.cert))
    assert isinstance(chain_only, ssl.SSLContext)
    assert chain_only.verify_mode == ssl.CERT_REQUIRED and not chain_only.check_hostname

    encrypted = database_tls(_settings(database_sslmode="require"))
    assert isinstance(encrypted, ssl.SSLContext)
    assert encrypted.verify_mode == ssl.CERT_NONE and not encrypted.check_hostname

    # as libpq: require with a root certificate verifies the chain
    pinned = database_tls(_settings(database_sslmode="require", database_sslrootcert=ca.cert))
    assert isinstance(pinned, ssl.SSLContext)
    assert pinned.verify_mode == ssl.CERT_REQUIRED and not pinned.check_hostname

    # no root certificate: the system trust store, still verifying
    system = database_tls(_settings(database_sslmode="verify-full"))
    assert isinstance(system, ssl.SSLContext)
    assert system.verify_mode == ssl.CERT_REQUIRED and system.check_hostname

    # a client certificate with an encrypted key loads with its passphrase only
    with_client = _settings(
        database_sslmode="verify-full",
        database_sslrootcert=ca.cert,
        database_sslcert=client.cert,
        database_sslkey=client.key,
        database_sslkey_password="key-pass",
    )
    assert isinstance(database_tls(with_client), ssl.SSLContext)
    no_passphrase = with_client.model_copy(update={"database_sslkey_password": None})
    with pytest.raises(ValueError, match="private key is encrypted and no passphrase is set"):
        database_tls(no_passphrase)  # never a terminal prompt
    wrong = with_client.model_copy(update={"database_sslkey_password": SecretStr("nope")})
    with pytest.raises(ssl.SSLError):
        database_tls(wrong)


@pytest.mark.parametrize("setting", ["database_url", "migration_database_url", "api_database_url"])
def test_a_database_setting_that_is_not_a_postgresql_url_is_refused_at_load(
    setting: str,
) -> None:
    """`DATABASE_URL=db:5432/x` was taken and failed at the first connection, in a
    traceback; refused at load, the commands print one line without the value."""
    for url in ("db:5432/healthscore", "mysql://u:pw@db/x", "host=db dbname=x"):
        assert "not a PostgreSQL URL" in _problem(**{setting: SecretStr(url)})
    for url in ("postgresql://u:pw@db/x", "postgres://db/x", "POSTGRESQL://u@/x?host=/tmp"):
        assert _settings(**{setting: SecretStr(url)})


# URLs asyncpg cannot read: the host forgotten (the password becomes the port), a
# password's unencoded '/' ending the authority early, or its '[' read as an address
UNREADABLE_URLS = (
    "postgresql://healthscore:{secret}/healthscore",
    "postgresql://healthscore:ab/{secret}@db/healthscore",
    "postgresql://healthscore:[{secret}@db/healthscore",
    "postgresql://healthscore:{secret}@[zz]/healthscore",
    "postgresql://healthscore:{secret}@db:5432x/healthscore",
)


@pytest.mark.parametrize("url", UNREADABLE_URLS)
def test_a_database_url_the_client_cannot_read_is_refused_at_load_without_its_password(
    url: str,
) -> None:
    """They were taken, and the first connection failed in a traceback of asyncpg's
    parser: `ValueError: invalid literal for int() with base 10: '<the password>'`."""
    secret = "S3cretPw"
    problem = _problem(database_url=SecretStr(url.format(secret=secret)))
    assert "not a PostgreSQL URL" in problem and "percent-encode" in problem
    assert "S3cret" not in problem
    for good in ("postgresql://u:p%2Fw%40d@[::1]:5432/x", "postgresql://u@h1:1,h2,[::1]/x"):
        assert _settings(database_url=SecretStr(good))


@pytest.mark.parametrize(
    "url",
    [
        *UNREADABLE_URLS,
        "postgresql://healthscore:ab?{secret}@db/x",
        "postgresql://healthscore:ab#{secret}@db/x",
        "postgresql://healthscore@db/x?pass%77ord={secret}",
        "postgresql://healthscore@db/x?a=1&SSLPASSWORD={secret}",
        "host=db password={secret}",
    ],
)
def test_redact_hides_the_password_of_any_string_and_never_raises(url: str) -> None:
    """`redact` raised ValueError ('Invalid IPv6 URL') on a password with '[', and
    returned the URL whole when its password sat where the port goes."""
    secret = "S3cretPw"
    assert "S3cret" not in redact(url.format(secret=secret))


def test_redact_keeps_what_is_not_a_password() -> None:
    for url in (
        "postgresql://u@db:5432/x?sslmode=require",
        "postgresql:///x?host=/tmp",
        "postgresql://[::1]:5432,h2/x#f",
    ):
        assert redact(url) == url
    assert redact("postgresql://u:pw@db/x?password=a&b=c") == (
        "postgresql://u:***@db/x?password=***&b=c"
    )


def test_a_database_url_on_the_command_line_is_checked_like_the_environments() -> None:
    with pytest.raises(ValidationError, match="not a PostgreSQL URL"):
        settings_from_args(Namespace(database_url="db:5432/x", bootstrap_servers=None))
    good = settings_from_args(Namespace(database_url="postgresql://db/x", bootstrap_servers="k:1"))
    assert good.database_url is not None and good.kafka_bootstrap_servers == "k:1"


def test_a_transaction_time_limit_must_be_above_the_idle_limit() -> None:
    # a transaction may idle up to the idle limit between two statements
    assert "must be above TRANSACTION_IDLE_LIMIT_SECONDS (60)" in _problem(
        transaction_time_limit_seconds=60
    )
    assert _problem(transaction_idle_limit_seconds=10, transaction_time_limit_seconds=5)
    assert _settings(transaction_time_limit_seconds=0).transaction_time_limit_seconds == 0
    assert _settings(transaction_idle_limit_seconds=0, transaction_time_limit_seconds=5)
    assert _settings().transaction_time_limit_seconds > _settings().transaction_idle_limit_seconds


def test_an_idle_limit_leaves_the_feed_wait_a_second_at_least() -> None:
    # a transaction waits half the idle limit for the broker
    assert "must be at least 2" in _problem(transaction_idle_limit_seconds=1.5)
    assert _settings(transaction_idle_limit_seconds=2).transaction_idle_limit_seconds == 2
    assert _settings(transaction_idle_limit_seconds=0).transaction_idle_limit_seconds == 0
