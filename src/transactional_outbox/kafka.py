"""``KafkaConnection``: where the brokers are and how to log in, for the relay and consumers.

One value object, one vocabulary: the relay reads it from ``OUTBOX_KAFKA_*``
variables (``--kafka-*`` flags), a consumer service from the same variables
with :meth:`KafkaConnection.from_env`, and both hand :meth:`KafkaConnection.client_args`
to their aiokafka clients.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from ._fields import option
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    import ssl

__all__ = ["SASL_MECHANISMS", "SECURITY_PROTOCOLS", "KafkaConnection"]

SecurityProtocol: TypeAlias = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism: TypeAlias = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

SECURITY_PROTOCOLS: tuple[str, ...] = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
"""The accepted ``security_protocol`` values (Kafka's ``security.protocol``)."""

SASL_MECHANISMS: tuple[str, ...] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
"""The accepted ``sasl_mechanism`` values."""

ENV_PREFIX = "OUTBOX_KAFKA_"
"""Prefix of the environment variables :meth:`KafkaConnection.from_env` reads."""


@dataclass(frozen=True, kw_only=True)
class KafkaConnection:
    """How to reach and log in to the Kafka brokers: the relay's and a consumer's.

    ::

        KafkaConnection(bootstrap_servers="kafka-1:9092,kafka-2:9092")
        KafkaConnection(
            bootstrap_servers="kafka:9093", security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512", sasl_username="billing", sasl_password="...",
            ssl_cafile="/etc/ssl/kafka-ca.pem",
        )
        KafkaConnection.from_env()   # OUTBOX_KAFKA_BOOTSTRAP_SERVERS, ... as the relay reads them

    Validated when built (:class:`~transactional_outbox.ConfigurationError` naming
    the field). ``sasl_password`` never appears in ``repr`` or in errors.
    ``ssl_context`` (code only) replaces the context built from the ``ssl_*`` files.
    """

    bootstrap_servers: str | Sequence[str] = option(
        help="required: Kafka bootstrap servers, comma-separated"
    )
    security_protocol: SecurityProtocol = option(
        "PLAINTEXT", "Kafka security protocol", choices=SECURITY_PROTOCOLS
    )
    sasl_mechanism: SaslMechanism = option("PLAIN", "SASL mechanism", choices=SASL_MECHANISMS)
    sasl_username: str = option("", "SASL user name")
    sasl_password: str = option("", "SASL password", secret=True)
    ssl_cafile: str = option("", "CA bundle to verify the brokers (SSL)")
    ssl_certfile: str = option("", "client certificate (SSL)")
    ssl_keyfile: str = option("", "client key (SSL)")
    ssl_context: ssl.SSLContext | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        raw = self.bootstrap_servers
        items = raw.split(",") if isinstance(raw, str) else list(raw)
        servers = tuple(s.strip() for s in items if isinstance(s, str) and s.strip())
        if not servers or len(servers) != len([s for s in items if str(s).strip()]):
            raise ConfigurationError(
                "bootstrap_servers", f"{raw!r} names no broker: give HOST:PORT[,HOST:PORT...]"
            )
        object.__setattr__(self, "bootstrap_servers", ",".join(servers))
        self.addresses  # noqa: B018 - validates each HOST:PORT
        for name, choices in (
            ("security_protocol", SECURITY_PROTOCOLS),
            ("sasl_mechanism", SASL_MECHANISMS),
        ):
            value = getattr(self, name)
            if value not in choices:
                raise ConfigurationError(
                    name, f"{value!r} is not a choice: choose one of {', '.join(choices)}"
                )
        if self.uses_sasl and not self.sasl_username:
            raise ConfigurationError("sasl_username", f"required with {self.security_protocol}")
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ConfigurationError("ssl_keyfile", "given without ssl_certfile")
        if not self.uses_ssl:
            for name in ("ssl_cafile", "ssl_certfile"):
                if getattr(self, name):
                    raise ConfigurationError(
                        name, f"set, but {self.security_protocol} does not use TLS"
                    )

    @property
    def servers(self) -> tuple[str, ...]:
        """The bootstrap servers, one ``HOST:PORT`` each."""
        return tuple(str(self.bootstrap_servers).split(","))

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bootstrap servers as (host, port); a server without a port is on 9092."""
        out = []
        for item in self.servers:
            host, _, port = item.rpartition(":")
            if not host:
                host, port = item, "9092"
            try:
                out.append((host.strip("[]"), int(port)))
            except ValueError:
                raise ConfigurationError(
                    "bootstrap_servers", f"{item!r} is not HOST:PORT"
                ) from None
        return out

    @property
    def uses_sasl(self) -> bool:
        """Whether the protocol logs in with SASL."""
        return self.security_protocol.startswith("SASL")

    @property
    def uses_ssl(self) -> bool:
        """Whether the protocol speaks TLS."""
        return self.security_protocol.endswith("SSL")

    def client_args(self) -> dict[str, Any]:
        """Keyword arguments for any aiokafka client (producer, consumer, admin).

        ``bootstrap_servers``, ``security_protocol`` and, as the protocol needs
        them, the SASL login and an ``ssl_context`` (``ssl_context`` itself, or one
        from ``ssl_cafile``/``ssl_certfile``/``ssl_keyfile`` and the system's CAs).
        """
        args: dict[str, Any] = {
            "bootstrap_servers": list(self.servers),
            "security_protocol": self.security_protocol,
        }
        if self.uses_sasl:
            args.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        if self.uses_ssl:
            args["ssl_context"] = self.ssl_context or self._ssl_context_from_files()
        return args

    def _ssl_context_from_files(self) -> ssl.SSLContext:
        import ssl

        try:
            ctx = ssl.create_default_context(cafile=self.ssl_cafile or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError("ssl_cafile", f"{self.ssl_cafile!r}: {exc}") from None
        if self.ssl_certfile:
            try:
                ctx.load_cert_chain(self.ssl_certfile, self.ssl_keyfile or None)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError("ssl_certfile", f"{self.ssl_certfile!r}: {exc}") from None
        return ctx

    def __repr__(self) -> str:
        shown = [f"bootstrap_servers={self.bootstrap_servers!r}"]
        for f in dataclasses.fields(self)[1:]:
            value = getattr(self, f.name)
            if value == f.default or (not f.repr and f.name != "sasl_password"):
                continue  # defaults, and ssl_context: a repr says nothing useful
            shown.append(f"{f.name}={'***' if f.name == 'sasl_password' else value!r}")
        return f"KafkaConnection({', '.join(shown)})"

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> KafkaConnection:
        """A connection from ``OUTBOX_KAFKA_<FIELD>`` variables (the relay's names).

        ``OUTBOX_KAFKA_BOOTSTRAP_SERVERS`` (required), ``..._SECURITY_PROTOCOL``,
        ``..._SASL_MECHANISM``, ``..._SASL_USERNAME``, ``..._SASL_PASSWORD``,
        ``..._SSL_CAFILE``, ``..._SSL_CERTFILE``, ``..._SSL_KEYFILE``; keyword
        ``overrides`` win. Errors name the variable.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in env_fields():
            var = ENV_PREFIX + f.name.upper()
            if var in env:
                values[f.name] = env[var]
        values.update(overrides)
        if not values.get("bootstrap_servers"):
            raise ConfigurationError(
                ENV_PREFIX + "BOOTSTRAP_SERVERS", "not set (no default: the brokers to use)"
            )
        try:
            return cls(**values)
        except ConfigurationError as exc:
            if exc.setting in overrides:
                raise
            raise ConfigurationError(ENV_PREFIX + exc.setting.upper(), exc.message) from None


def env_fields() -> tuple[dataclasses.Field[Any], ...]:
    """The fields of :class:`KafkaConnection` set from text (variables, flags)."""
    return tuple(f for f in dataclasses.fields(KafkaConnection) if f.metadata.get("help"))
