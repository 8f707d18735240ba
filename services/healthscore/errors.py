"""Named errors of the service."""


class HealthscoreError(Exception):
    """Base of every error this package raises on purpose."""


class ServiceStartError(HealthscoreError):
    """An embedded or containerized dependency did not start."""


class StartupRefused(HealthscoreError):
    """The service cannot start as configured; the message names the setting to change."""


class MigrationError(HealthscoreError):
    """A migration failed or the applied history does not match the files."""


class ModelConfigError(HealthscoreError):
    """The scoring model config is invalid; the message names the field."""


class InvalidStoredOffset(HealthscoreError):
    """A partition's stored offset went backwards or is ahead of the log."""


class UnsafeDatabaseRole(HealthscoreError):
    """The service would run as a superuser or a BYPASSRLS role."""


class OffsetGap(HealthscoreError):
    """A batch starts past a partition's stored offset: records were skipped.

    Raised before the batch commits; the consumer seeks back to the stored
    offset, so the skipped records are fetched again instead of lost.
    """

    def __init__(self, topic: str, partition: int, stored: int, first: int) -> None:
        super().__init__(
            f"{topic}:{partition}: batch starts at offset {first}, "
            f"but the stored next offset is {stored}"
        )
        self.topic = topic
        self.partition = partition
        self.stored = stored
        self.first = first
