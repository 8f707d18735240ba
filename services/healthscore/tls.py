"""Client-side TLS contexts for PostgreSQL and Kafka, built from file paths in Settings."""

from __future__ import annotations

import ssl
from pathlib import Path

from pydantic import SecretStr


def client_ssl_context(
    *,
    cafile: Path | None = None,
    certfile: Path | None = None,
    keyfile: Path | None = None,
    key_password: SecretStr | None = None,
    verify_certificate: bool = True,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A TLS client context: TLS 1.2 or later, the server verified unless told otherwise.

    `cafile` replaces the system trust store (only servers whose certificates chain
    to it are trusted); without it the system's CAs are used. `certfile` (with
    `keyfile`, unless the key is in the same file) is the client certificate.
    """
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(cafile) if cafile is not None else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify_certificate:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = check_hostname
    if certfile is not None:
        key = keyfile or certfile

        def no_passphrase() -> str:
            # without a callback OpenSSL would prompt on the terminal for it
            raise ValueError(
                f"{key}: the private key is encrypted and no passphrase is set "
                "(KAFKA_SSL_KEY_PASSWORD / DATABASE_SSLKEY_PASSWORD)"
            )

        context.load_cert_chain(
            str(certfile),
            str(keyfile) if keyfile is not None else None,
            password=key_password.get_secret_value() if key_password is not None else no_passphrase,
        )
    return context
