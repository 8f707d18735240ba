"""Settings: the only reader of the environment."""

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, FilePath, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from healthscore.store.dburl import clients_parse

DEFAULT_MODEL_PATH = Path(__file__).parent / "model" / "health_model.v4.json"
# RFC 7518, 3.2: an HS256 key has at least the hash's 256 bits
MIN_JWT_SECRET_BYTES = 32
# how the deploy examples' placeholders start (deploy/compose/env.example, the k8s Secret)
PLACEHOLDER_PREFIX = "change-me"
# TRANSACTION_IDLE_LIMIT_SECONDS' floor, when set (0: no limit)
MIN_TRANSACTION_IDLE_LIMIT_SECONDS = 2.0

KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
KafkaSaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
DatabaseSslMode = Literal["disable", "require", "verify-ca", "verify-full"]


class Settings(BaseSettings):
    """Configuration from environment variables (or a `.env` file)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    database_url: SecretStr | None = Field(
        default=None,
        description="PostgreSQL URL the service uses. Unset: embedded services are started.",
    )
    migration_database_url: SecretStr | None = Field(
        default=None,
        description="URL with rights to create roles and tables; defaults to DATABASE_URL.",
    )
    database_role: str | None = Field(
        default="healthscore_writer",
        description="Role the service switches to after connecting (never a superuser).",
    )
    database_pool_size: int = Field(
        default=6,
        ge=2,
        description="Batch, relay, sweep, gauges, readiness and the quality loops share it.",
    )
    transaction_idle_limit_seconds: float = Field(
        default=60.0,
        ge=0,
        description="PostgreSQL ends a `serve` session idle this long inside a transaction "
        "(idle_in_transaction_session_timeout): a replica frozen or cut off mid-batch or "
        "mid-projector-pass (its connection open for hours) releases the rows it locks, its "
        "partitions' offsets among them, instead of stalling their next owner (0: no "
        "limit; else at least 2). A projector pass or live batch waits for the health "
        "feed for half of it at most",
    )
    # Above every transaction `serve` and `replay` run legitimately: a batch (claim, its
    # computing, its states, its dead letters' acknowledgements, sent whole and then, for
    # those refused as too large, without their value: two broker waits, each cut by the
    # idle limit), a projector pass (one wait for the health feed), a silence sweep page
    # (SWEEP_BUDGET rescorings), a shadow page; seconds each, at most about three idle
    # limits in the worst case allowed. The relay, which holds its transaction while the
    # broker acknowledges a page (up to 75 s), sets its own bound (outbox.py); `import`,
    # `migrate` and `offsets-reset` run on connections of their own, without it.
    transaction_time_limit_seconds: float = Field(
        default=180.0,
        ge=0,
        description="PostgreSQL ends a `serve` (and `replay`) session whose transaction has "
        "lasted this long (transaction_timeout, PostgreSQL 17 or later; on an older server "
        "the service says so at start and runs without it): a replica frozen half-way "
        "through sending a statement (its backend active, waiting for the rest of the "
        "message, which TRANSACTION_IDLE_LIMIT_SECONDS does not bound) releases its "
        "partitions' offsets and states to their next owner after this long at most. Keep "
        "it above a batch's longest run and above TRANSACTION_IDLE_LIMIT_SECONDS "
        "(0: no limit)",
    )
    database_sslmode: DatabaseSslMode | None = Field(
        default=None,
        description="TLS to PostgreSQL for DATABASE_URL and MIGRATION_DATABASE_URL (overrides "
        "an sslmode in the URLs). verify-full: encrypted, certificate chain and host name "
        "checked; verify-ca: chain only; require: encrypted, unverified unless "
        "DATABASE_SSLROOTCERT is set (as libpq); disable: no TLS. Unset: as the URL says "
        "(asyncpg's default: prefer).",
    )
    database_sslrootcert: FilePath | None = Field(
        default=None,
        description="CA certificate(s) (PEM) the server certificate must chain to. Unset with "
        "verify-ca/verify-full: the system trust store (libpq's sslrootcert=system).",
    )
    database_sslcert: FilePath | None = Field(
        default=None, description="Client certificate (PEM) for certificate authentication."
    )
    database_sslkey: FilePath | None = Field(
        default=None,
        description="Private key of DATABASE_SSLCERT (unset: the key is in the certificate file).",
    )
    database_sslkey_password: SecretStr | None = Field(
        default=None, description="Passphrase of an encrypted DATABASE_SSLKEY."
    )
    kafka_bootstrap_servers: str | None = Field(
        default=None, description="Kafka bootstrap servers. Unset: embedded broker."
    )
    kafka_idempotent_producer: bool = Field(
        default=True,
        description="Idempotent producer (on for real Kafka; the embedded broker refuses it).",
    )
    kafka_security_protocol: KafkaSecurityProtocol = Field(
        default="PLAINTEXT",
        description="How every Kafka client connects: PLAINTEXT, SSL (TLS), SASL_PLAINTEXT "
        "(SASL without TLS) or SASL_SSL (SASL over TLS: what managed Kafka asks for).",
    )
    kafka_sasl_mechanism: KafkaSaslMechanism | None = Field(
        default=None, description="SASL mechanism with SASL_*: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512."
    )
    kafka_sasl_username: str | None = Field(default=None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(default=None, description="SASL password.")
    kafka_ssl_cafile: FilePath | None = Field(
        default=None,
        description="CA certificate(s) (PEM) the brokers' certificates must chain to, with SSL "
        "and SASL_SSL. Unset: the system trust store. Host names are always verified.",
    )
    kafka_ssl_certfile: FilePath | None = Field(
        default=None, description="Client certificate (PEM) for mutual TLS."
    )
    kafka_ssl_keyfile: FilePath | None = Field(
        default=None,
        description="Private key of KAFKA_SSL_CERTFILE (unset: the key is in the certificate "
        "file).",
    )
    kafka_ssl_key_password: SecretStr | None = Field(
        default=None, description="Passphrase of an encrypted KAFKA_SSL_KEYFILE."
    )
    usage_topic: str = "product.usage.v1"
    support_topic: str = "support.interactions.v1"
    profile_topic: str = "organization.profile.v1"
    alert_topic: str = "customer.churn-risk.v1"
    health_topic: str = "customer.health.v1"
    dlq_suffix: str = ".dlq"
    consumer_group: str = "healthscore"
    kafka_session_timeout_ms: int = Field(
        default=10_000,
        ge=1000,
        description="Consumer group session timeout: how long a crashed member holds its "
        "partitions before the group reassigns them.",
    )
    batch_max_records: int = Field(default=2000, ge=1)
    kafka_max_partition_fetch_bytes: int = Field(
        default=1024 * 1024,
        ge=64 * 1024,
        description="Per-partition fetch size: bounds what a consumer buffers in memory.",
    )
    kafka_max_decompressed_batch_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024 * 1024,
        description="The most a fetched record batch may take decompressed. A batch past "
        "it (a decompression bomb: kilobytes of zstd holding gigabytes) is not decompressed "
        "but dead-lettered as corrupt_record, whole. Raise it above the source topics' "
        "max.message.bytes times their records' compression ratio if a producer writes "
        "larger batches.",
    )
    batch_timeout_ms: int = Field(default=50, ge=1)
    batch_min_interval_ms: int = Field(
        default=50,
        ge=0,
        description="after a batch smaller than batch_max_records, the consumer takes the "
        "next fetch only this long after that batch began: live traffic comes in fewer, "
        "larger batches (each costs a transaction's round trips whatever its size), for at "
        "most this much latency; 0: at once",
    )
    kafka_fetch_max_wait_ms: int = Field(
        default=20,
        ge=1,
        description="How long the broker may hold a fetch that has no new records yet. "
        "Kafka answers a held fetch as soon as records arrive; the embedded broker holds it "
        "for most of this time even then, so it bounds live latency from below.",
    )
    kafka_commit_interval_ms: int = Field(
        default=1000,
        ge=0,
        description="How often the consumer commits to Kafka the offsets PostgreSQL "
        "committed (lag tooling reads them; the service resumes from PostgreSQL's): the "
        "latest at most this often, a revoked partition's before it goes; 0: after every "
        "batch.",
    )
    max_message_bytes: int = Field(default=64 * 1024, ge=1024)
    kafka_max_request_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="The largest record the service's producer sends (dead letters carry "
        "the original bytes, larger than MAX_MESSAGE_BYTES); set it to the dead-letter "
        "topics' max.message.bytes. A dead letter over it, or refused by the broker as too "
        "large, is sent without its value (header x-value-omitted).",
    )
    topic_partitions: int = Field(default=4, ge=1)
    topic_replication_factor: int = Field(
        default=1,
        ge=1,
        description="Replication factor of the topics the service creates when they are "
        "missing (1 suits the single-node dev broker; 3 on a production cluster).",
    )
    model_path: Path = DEFAULT_MODEL_PATH
    shadow_model_path: FilePath | None = Field(
        default=None,
        description="A candidate scoring model to score beside the live one (shadow scoring: "
        "its scores and alert decisions are stored, never published). Unset: no shadow.",
    )
    shadow_interval_seconds: float = Field(
        default=5.0,
        gt=0,
        description="pause of the shadow scorer after it walked every organization once",
    )
    outcome_interval_seconds: float = Field(
        default=60.0,
        gt=0,
        description="how often live alert decisions are labelled and the outcome gauges "
        "(precision, lead time) refreshed",
    )
    usage_drift_interval_seconds: float = Field(
        default=600.0,
        gt=0,
        description="how often a sample of organizations' usage volume is compared with "
        "the live model's usage_reference (healthscore_usage_volume_ratio)",
    )
    usage_drift_sample_organizations: int = Field(
        default=2000,
        ge=10,
        description="organizations in that sample (a random run of the id space)",
    )
    sweep_interval_seconds: float = Field(default=60.0, gt=0)
    silence_settle_seconds: float = Field(
        default=60.0,
        ge=0,
        description="the silence sweep leaves alone an organization a batch applied events "
        "to within this long: its events are still arriving (a backfill of its history "
        "behind the other organizations' events); 0: no wait",
    )
    relay_interval_seconds: float = Field(
        default=1.0,
        gt=0,
        description="how often the outbox relay looks for alerts no batch of this process "
        "announced (another process's, the silence sweep's, a page whose publish failed); "
        "a batch that commits alerts wakes it at once",
    )
    projector_interval_seconds: float = Field(
        default=0.2,
        gt=0,
        description="the least pause of the read-model projector after a pass that left "
        "less than a page queued (a full page goes on at once)",
    )
    projector_idle_seconds: float = Field(
        default=1.0,
        gt=0,
        description="how often the projector looks for changes no batch of this process "
        "announced (another process's, the silence sweep's); a batch that applied events "
        "wakes it, after projector_interval_seconds",
    )
    projector_page_size: int = Field(
        default=500, ge=1, description="organizations the projector writes per transaction"
    )
    projector_shards: int = Field(
        default=4,
        ge=1,
        le=256,
        description="shards of the read-model queue: up to this many processes project at "
        "once, each shard by one of them at a time",
    )
    alignment_live_lag_records: int = Field(
        default=1000,
        ge=0,
        description="a partition at most this far behind its high watermark is live traffic: "
        "applied as it comes, not held for the event-time alignment (0: always align)",
    )
    projector_drain_on_stop_seconds: float = Field(
        default=5.0, ge=0, description="on a graceful stop, how long to finish the projection"
    )
    health_feed_late_record_seconds: float = Field(
        default=120.0,
        ge=0,
        description="how long a health-feed record whose send was given up on (a projector "
        "pass's or live batch's feed not acknowledged within its wait; the follow-ups a "
        "graceful stop cut) may still land, after a newer score: its organization's feed "
        "is owed and republished by a later pass of any replica, not before this long, "
        "even should the replica that sent it die first",
    )
    read_model_staleness_target_seconds: float = Field(
        default=2.0,
        gt=0,
        description="the freshness the read model is run for (Prometheus rule threshold)",
    )
    read_model_catch_up_window_seconds: float = Field(
        default=120.0,
        ge=0,
        description="while the consumer catches up (lag above alignment_live_lag_records), the "
        "projector leaves a change queued up to this long (at most as long as its backlog "
        "takes to apply at the recent pace), so that the organization's later changes are "
        "projected with it (live traffic is projected at once)",
    )
    read_model_catch_up_after_seconds: float = Field(
        default=10.0,
        ge=0,
        description="the projector coalesces only while the consumer's backlog takes longer "
        "than this to apply at the recent pace: live traffic and short bursts are projected "
        "at once",
    )
    read_model_live_in_batch: bool = Field(
        default=False,
        description="a batch that starts while the consumer is live (the projector would "
        "not coalesce) projects its own changes in its transaction instead of queueing "
        "them for the projector; changes while catching up are queued and coalesced. Off "
        "by default: its health-feed publication waits for the broker inside every live "
        "batch (docs/performance.md, Tenth session)",
    )
    read_model_staleness_max_seconds: float = Field(
        default=120.0,
        gt=0,
        description="/readyz fails while the read model is further behind than this",
    )
    owned_states_max: int = Field(
        default=10_000,
        ge=0,
        description="organization states a consumer process holds between batches, so that "
        "a batch need not read and lock them (least recently used beyond it are dropped; "
        "0: every batch reads its organizations' states)",
    )
    dedupe_retention_days: int = Field(default=14, ge=1)
    history_retention_days: int | None = Field(
        default=None,
        ge=32,
        description=(
            "Days of score history kept (the sweep's replicas delete older days once a UTC "
            "day); "
            "unset: kept until the organization is erased."
        ),
    )
    silence_rescore_after_seconds: float = Field(
        default=6 * 3600,
        gt=0,
        description="Event-time age after which the silence sweep rescores an organization.",
    )
    ops_host: str = "127.0.0.1"
    ops_port: int = Field(default=8080, ge=0, le=65535)
    ops_max_requests_per_second: float = Field(
        default=50.0,
        ge=0,
        description="The ops endpoints answer at most this many requests a second, in turn "
        "(more wait; none refused), so a crowd of clients cannot take the consumer's time; "
        "0 = no limit.",
    )
    readiness_interval_seconds: float = Field(
        default=2.0,
        gt=0,
        description="How often the readiness checks run in the background; /readyz serves "
        "the latest result (not ready once it is older than 3 intervals + the timeout).",
    )
    readiness_check_timeout_seconds: float = Field(
        default=2.0, gt=0, description="Each readiness check's own time limit."
    )
    asyncapi_show_servers: bool = Field(
        default=False,
        description="Show the broker address in the served AsyncAPI page and document "
        "(hidden behind a placeholder otherwise).",
    )
    event_loop: str = Field(
        default="auto",
        pattern="^(auto|asyncio|uvloop)$",
        description="The asyncio loop of `serve`: uvloop when installed (auto), or asyncio.",
    )
    gc_young_threshold: int = Field(
        default=50_000,
        ge=0,
        description="Allocations between young garbage collections in `serve` and `replay` "
        "(start-up objects are frozen, full collections run between batches); 0 keeps "
        "CPython's defaults.",
    )
    gc_full_every_batches: int = Field(
        default=3,
        ge=1,
        description="With GC_YOUNG_THRESHOLD set: a full garbage collection after every "
        "this many full batches' worth of records (BATCH_MAX_RECORDS each), between batches.",
    )
    api_host: str = Field(default="127.0.0.1", description="Address `healthscore api` binds.")
    api_port: int = Field(default=8000, ge=0, le=65535, description="Port of `healthscore api`.")
    api_max_connections: int = Field(
        default=512,
        ge=1,
        description="Connections `healthscore api` holds at once (idle keep-alive ones "
        "included): one more is answered 503 with Retry-After as it opens, and closed. "
        "Below the process's file descriptor limit (often 1024), which its database "
        "pool needs too.",
    )
    api_ops_port: int = Field(
        default=8081,
        ge=0,
        le=65535,
        description="Port of the API process's Prometheus exposition (`/metrics`), on "
        "API_HOST apart from the API's: the Service and the Ingress expose API_PORT only.",
    )
    api_database_url: SecretStr | None = Field(
        default=None,
        description="PostgreSQL URL of the read API: a LOGIN role that is a member of "
        "API_DATABASE_ROLE (never a superuser in production). Unset: DATABASE_URL.",
    )
    api_database_role: str = Field(
        default="cs_dashboard",
        description="Role the API's sessions run as; row-level security binds it.",
    )
    api_database_pool_size: int = Field(
        default=10, ge=1, description="Connections of one API process (one per request in flight)."
    )
    api_jwt_secret: SecretStr | None = Field(
        default=None, description="HS256 secret the API verifies bearer tokens with."
    )
    api_jwks_path: FilePath | None = Field(
        default=None,
        description="JWKS file (the identity provider's public keys) for RS256 bearer tokens.",
    )
    # an empty value is refused, not taken as unset: it would require `aud`/`iss` ""
    api_jwt_audience: str | None = Field(
        default=None, min_length=1, description="Required `aud` of bearer tokens, when set."
    )
    api_jwt_issuer: str | None = Field(
        default=None, min_length=1, description="Required `iss` of bearer tokens, when set."
    )
    api_db_signing_key_id: int | None = Field(
        default=None,
        ge=1,
        description="key_id of the app_signing_keys row the API mints database identity "
        "tokens with (app_login).",
    )
    api_db_signing_key: SecretStr | None = Field(
        default=None,
        description="That key's secret, hex (`SELECT encode(secret, 'hex') FROM "
        "app_signing_keys`), provisioned by an operator.",
    )
    api_refresh_seconds: float = Field(
        default=15.0, gt=0, description="How often the dashboard page refreshes its lists."
    )
    api_response_cache_entries: int = Field(
        default=4096,
        ge=0,
        description="Answers the API keeps per process (per audience: the admins share "
        "theirs, anybody else keeps their own; per request and read-model version, "
        "invalidated by the database's change announcements); 0: no cache.",
    )
    api_statement_timeout_ms: int = Field(
        default=5000,
        ge=0,
        description="The longest one statement of a read API request may run in PostgreSQL "
        "(its sessions' statement_timeout); past it the request is a 503 problem saying so "
        "(a subject search matching most interactions costs about its matches); 0: no limit.",
    )
    api_list_staleness_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How long after it was computed a kept organization list may still be "
        "served once the read model has changed under it (it is computed again in the "
        "background a second before that, or from half of it); 0: lists are recomputed at "
        "every change, as organization pages always are.",
    )
    api_response_cache_megabytes: int = Field(
        default=64, ge=1, description="Memory the API's kept answers may take per process."
    )
    api_access_log: bool = Field(
        default=True,
        description="Log every read API request (`api_request`: the verified user, method, "
        "path without the query, status, duration) for an audit of who read what.",
    )
    log_level: str = "INFO"
    log_format: str = Field(default="auto", pattern="^(auto|json|console)$")
    state_dir: Path = Field(
        default=Path(".healthscore"), description="Where embedded services keep their data."
    )

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("database_url", "migration_database_url", "api_database_url")
    @classmethod
    def _postgresql_url(cls, value: SecretStr | None) -> SecretStr | None:
        # a URL the client would only refuse at its first connection, in a traceback
        if value is not None:
            scheme, sep, _rest = value.get_secret_value().partition("://")
            if not sep or scheme.lower() not in ("postgresql", "postgres"):
                raise ValueError("not a PostgreSQL URL (postgresql://user:password@host/db)")
            if not clients_parse(value.get_secret_value()):
                raise ValueError(
                    "not a PostgreSQL URL (postgresql://user:password@host:port/db): a port"
                    " that is not a number or an unmatched bracket; percent-encode"
                    " @ : / ? # [ ] in the user name and password"
                )
        return value

    @field_validator("api_jwt_secret")
    @classmethod
    def _unguessable_jwt_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # whoever knows it signs tokens of anybody, an admin included: a short one is
        # found offline from any token the API answered, the examples' placeholder is public
        if value is not None:
            secret = value.get_secret_value()
            if secret.lower().startswith(PLACEHOLDER_PREFIX):
                raise ValueError(
                    "still the deploy example's placeholder: set the identity provider's "
                    "secret (or mount its JWKS and set API_JWKS_PATH)"
                )
            if len(secret.encode()) < MIN_JWT_SECRET_BYTES:
                raise ValueError(
                    f"an HS256 secret must be at least {MIN_JWT_SECRET_BYTES} bytes "
                    "(RFC 7518, 3.2): a shorter one is found offline from any token"
                )
        return value

    @field_validator("database_sslmode", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_connection_security(self) -> Self:
        problems = [*self._kafka_security_problems(), *self._database_tls_problems()]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _check_transaction_limits(self) -> Self:
        # a transaction may idle up to the idle limit between two statements: a time limit
        # at or below it would end transactions that limit allows
        time_limit, idle_limit = (
            self.transaction_time_limit_seconds,
            self.transaction_idle_limit_seconds,
        )
        if 0 < time_limit <= idle_limit:
            raise ValueError(
                f"TRANSACTION_TIME_LIMIT_SECONDS ({time_limit:g}) must be above "
                f"TRANSACTION_IDLE_LIMIT_SECONDS ({idle_limit:g}), or 0 (no limit)"
            )
        # a projector pass or live batch waits half the idle limit for the broker: under
        # a second, passes would owe their feed (and pause it) at any broker hiccup
        if 0 < idle_limit < MIN_TRANSACTION_IDLE_LIMIT_SECONDS:
            raise ValueError(
                f"TRANSACTION_IDLE_LIMIT_SECONDS ({idle_limit:g}) must be at least "
                f"{MIN_TRANSACTION_IDLE_LIMIT_SECONDS:g} (a transaction waits half of it "
                "for the broker), or 0 (no limit)"
            )
        return self

    def _kafka_security_problems(self) -> list[str]:
        protocol = self.kafka_security_protocol
        problems: list[str] = []
        sasl = {
            "KAFKA_SASL_MECHANISM": self.kafka_sasl_mechanism,
            "KAFKA_SASL_USERNAME": self.kafka_sasl_username,
            "KAFKA_SASL_PASSWORD": self.kafka_sasl_password,
        }
        if protocol.startswith("SASL_"):
            missing = [name for name, value in sasl.items() if not value]
            if missing:
                problems.append(f"KAFKA_SECURITY_PROTOCOL={protocol} needs {', '.join(missing)}")
        else:
            stray = [name for name, value in sasl.items() if value is not None]
            if stray:
                problems.append(
                    f"{', '.join(stray)} set, but KAFKA_SECURITY_PROTOCOL={protocol} does not "
                    "authenticate with SASL (SASL_SSL does)"
                )
        tls = {
            "KAFKA_SSL_CAFILE": self.kafka_ssl_cafile,
            "KAFKA_SSL_CERTFILE": self.kafka_ssl_certfile,
            "KAFKA_SSL_KEYFILE": self.kafka_ssl_keyfile,
            "KAFKA_SSL_KEY_PASSWORD": self.kafka_ssl_key_password,
        }
        if not protocol.endswith("SSL"):
            stray = [name for name, value in tls.items() if value is not None]
            if stray:
                problems.append(
                    f"{', '.join(stray)} set, but KAFKA_SECURITY_PROTOCOL={protocol} does not "
                    "use TLS (SSL or SASL_SSL do)"
                )
        elif self.kafka_ssl_certfile is None and (
            self.kafka_ssl_keyfile is not None or self.kafka_ssl_key_password is not None
        ):
            problems.append("KAFKA_SSL_KEYFILE and KAFKA_SSL_KEY_PASSWORD need KAFKA_SSL_CERTFILE")
        return problems

    def _database_tls_problems(self) -> list[str]:
        mode = self.database_sslmode
        files = {
            "DATABASE_SSLROOTCERT": self.database_sslrootcert,
            "DATABASE_SSLCERT": self.database_sslcert,
            "DATABASE_SSLKEY": self.database_sslkey,
            "DATABASE_SSLKEY_PASSWORD": self.database_sslkey_password,
        }
        if mode is None or mode == "disable":
            stray = [name for name, value in files.items() if value is not None]
            if stray:
                return [
                    f"{', '.join(stray)} set, but DATABASE_SSLMODE is {mode or 'unset'} "
                    "(set it to verify-full)"
                ]
        elif self.database_sslcert is None and (
            self.database_sslkey is not None or self.database_sslkey_password is not None
        ):
            return ["DATABASE_SSLKEY and DATABASE_SSLKEY_PASSWORD need DATABASE_SSLCERT"]
        return []

    @property
    def input_topics(self) -> list[str]:
        """The topics the service consumes, partitioned alike by organization."""
        return [self.usage_topic, self.support_topic, self.profile_topic]

    @property
    def activity_topics(self) -> list[str]:
        """The input topics whose event times make the log's watermark (the silence
        sweep's and the alert outcomes'): a profile topic is quiet by nature and would
        hold it back for good."""
        return [self.usage_topic, self.support_topic]

    @property
    def dlq_topics(self) -> dict[str, str]:
        return {t: t + self.dlq_suffix for t in self.input_topics}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
