"""Settings: the only reader of the environment."""

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL_PATH = Path(__file__).parent / "model" / "health_model.v1.json"


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
        default=6, ge=2, description="Batch, relay, sweep, gauges and readiness share it."
    )
    kafka_bootstrap_servers: str | None = Field(
        default=None, description="Kafka bootstrap servers. Unset: embedded broker."
    )
    kafka_idempotent_producer: bool = Field(
        default=True,
        description="Idempotent producer (on for real Kafka; the embedded broker refuses it).",
    )
    usage_topic: str = "product.usage.v1"
    support_topic: str = "support.interactions.v1"
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
    batch_max_records: int = Field(default=3000, ge=1)
    kafka_max_partition_fetch_bytes: int = Field(
        default=1024 * 1024,
        ge=64 * 1024,
        description="Per-partition fetch size: bounds what a consumer buffers in memory.",
    )
    batch_timeout_ms: int = Field(default=50, ge=1)
    kafka_fetch_max_wait_ms: int = Field(
        default=500,
        ge=1,
        description="How long the broker may hold a fetch that has no new records yet.",
    )
    max_message_bytes: int = Field(default=64 * 1024, ge=1024)
    topic_partitions: int = Field(default=4, ge=1)
    model_path: Path = DEFAULT_MODEL_PATH
    sweep_interval_seconds: float = Field(default=60.0, gt=0)
    relay_interval_seconds: float = Field(default=0.05, gt=0)
    dedupe_retention_days: int = Field(default=14, ge=1)
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
        "this many batches.",
    )
    log_level: str = "INFO"
    log_format: str = Field(default="auto", pattern="^(auto|json|console)$")
    state_dir: Path = Field(
        default=Path(".healthscore"), description="Where embedded services keep their data."
    )

    @property
    def dlq_topics(self) -> dict[str, str]:
        return {t: t + self.dlq_suffix for t in (self.usage_topic, self.support_topic)}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
