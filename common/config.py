"""Configuration: the SPEC's keys, parsed once into a frozen object.

Order of precedence: the process environment, then `.env` in the project root
(python-dotenv never overrides a variable that is already set), then the defaults
below. A bad value raises ConfigError naming the key; programs print that one line
and exit with status 2 before doing anything else.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path

from common.urls import split_urls

PROJECT_ROOT = Path(__file__).resolve().parent.parent

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
MAX_QUEUES = 100  # queue names one worker takes tasks from (and one claim names)


class ConfigError(Exception):
    """A configuration value is invalid; str(exc) names the key."""


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# a host name: letters, digits, '-' and '_' in dot-separated labels of 1-63 characters
_HOST_NAME = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)(?:\.(?!-)[a-z0-9_-]{1,63}(?<!-))*")


@dataclass(frozen=True)
class HostAllowList:
    """HTTP_REQUEST_ALLOWED_HOSTS: which hosts the real mode of `http_request` may reach.

    A comma list of entries, each a host name (`api.example.com`: that name, any case,
    with or without a trailing dot), a wildcard (`*.example.com`: any name below
    example.com, not example.com itself), an IP address (`192.0.2.7`, `::1`, `[::1]`) or
    a CIDR range (`10.0.0.0/8`, `2001:db8::/32`). Ports are not part of an entry: a listed
    host is allowed on any port. Empty (the default): no host at all.

    `names` and `wildcards` decide which host *names* a URL may use; `networks` which
    IP addresses a URL may name, and which private, loopback, link-local or otherwise
    non-public addresses a listed name may resolve to (tasks/http_fetch.py applies both).
    """

    names: frozenset[str] = frozenset()
    wildcards: tuple[str, ...] = ()  # ".example.com" for "*.example.com"
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, text: str) -> HostAllowList:
        """The list a setting's text describes; ValueError naming the first bad entry."""
        names: set[str] = set()
        wildcards: list[str] = []
        networks: list[IPNetwork] = []
        for raw in text.split(","):
            entry = raw.strip().lower()
            if not entry:
                continue
            network = _network(entry)
            if network is not None:
                networks.append(network)
            elif entry.startswith("*."):
                wildcards.append("." + _host_name(entry[2:], raw))
            else:
                names.add(_host_name(entry, raw))
        return cls(frozenset(names), tuple(dict.fromkeys(wildcards)), tuple(networks))

    def __bool__(self) -> bool:
        return bool(self.names or self.wildcards or self.networks)

    def __str__(self) -> str:
        """The setting's text for this list (entries in a canonical order)."""
        entries = [*sorted(self.names), *(f"*{w}" for w in self.wildcards)]
        return ",".join([*entries, *(str(n) for n in self.networks)])

    def allows_name(self, name: str) -> bool:
        """Whether a host name (lower case, no trailing dot) is listed or matches a
        wildcard. Only for names: an IP address is allowed by `covers`."""
        return name in self.names or name.endswith(self.wildcards)

    def covers(self, address: IPAddress) -> bool:
        """Whether an IP address or CIDR entry covers `address` (an IPv4-mapped IPv6
        address, ::ffff:a.b.c.d, counts as the IPv4 address it maps)."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)


def _network(entry: str) -> IPNetwork | None:
    """An IP address or CIDR entry as a network (an address is a /32 or /128), None for
    anything else (a host name, checked by the caller); ValueError for a bad range."""
    bare = entry[1:-1] if entry.startswith("[") and entry.endswith("]") else entry
    head, slash, prefix = bare.partition("/")
    if "%" in head:
        raise ValueError(f"{entry!r}: an address with a zone (%) is not accepted")
    try:
        address = ipaddress.ip_address(head)
    except ValueError:
        return None
    kind = ipaddress.IPv4Network if address.version == 4 else ipaddress.IPv6Network
    try:
        network = kind(f"{address}/{prefix}" if slash else str(address))
    except ValueError as exc:
        if "has host bits set" in str(exc):
            wide = kind(f"{address}/{prefix}", strict=False)
            raise ValueError(f"{entry!r} has host bits set (did you mean {wide}?)") from None
        raise ValueError(f"{entry!r} is not a valid CIDR range ({exc})") from None
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        raise ValueError(f"{entry!r} is an IPv4-mapped address or range: write its IPv4 form")
    return network


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _host_name(name: str, raw: str) -> str:
    """A host name entry, lower case and without a trailing dot; ValueError otherwise."""
    name = name.removesuffix(".")
    if ":" in name or "/" in name:
        raise ValueError(
            f"{raw.strip()!r} is not a host name, IP address or CIDR range "
            "(no scheme, port or path: a listed host is allowed on any port)"
        )
    if len(name) > 253 or not _HOST_NAME.fullmatch(name):
        raise ValueError(f"{raw.strip()!r} is not a host name, IP address or CIDR range")
    last = name.rsplit(".", 1)[-1]
    if last.isdigit() or last.startswith("0x"):
        raise ValueError(
            f"{raw.strip()!r} is neither a host name nor an IP address in its usual "
            "form (write a.b.c.d, or a CIDR range)"
        )
    return name


@dataclass(frozen=True)
class Config:
    dispatcher_host: str = "127.0.0.1"
    dispatcher_port: int = 5000
    database_url: str = "sqlite:///data/tasks.db"
    dispatcher_url: str = "http://127.0.0.1:5000"
    lease_seconds: float = 120.0
    worker_dead_after: float = 60.0
    worker_forget_after: float = 86_400.0
    worker_poll_interval: float = 5.0
    worker_heartbeat_interval: float = 30.0
    worker_concurrency: int = 1
    worker_cache_dir: str = "data/worker-cache"
    cache_retry_interval: float = 20.0
    cache_ttl_seconds: float = 3600.0
    primes_max_limit: int = 100_000_000
    trial_division_max_limit: int = 10_000_000
    http_request_allowed_hosts: str = ""  # parsed: `http_request_allow_list`
    default_max_retries: int = 3
    default_task_timeout: float = 300.0
    api_token: str = ""
    api_tokens_file: str = ""
    max_request_bytes: int = 1_048_576
    task_retention_seconds: float = 604_800.0
    audit_retention_seconds: float = 7_776_000.0  # 90 days
    dispatcher_processes: int = 2
    dispatcher_connections: int = 1000
    dispatcher_read_timeout: float = 10.0
    log_level: str = "INFO"
    log_format: str = "text"
    max_wait_seconds: float = 30.0
    max_batch: int = 1000
    max_pending_tasks: int = 0
    reap_interval: float = 5.0
    retry_backoff_base: float = 1.0
    retry_backoff_cap: float = 300.0
    worker_prefetch: str = "auto"
    worker_max_tasks_per_child: int = 0
    worker_shutdown_grace: float = 30.0
    worker_breaker_failures: int = 5
    worker_breaker_max_backoff: float = 30.0
    worker_metrics_port: int = 0
    worker_queues: str = "default"
    task_modules: str = ""
    database_pool_size: int = 10
    schedules_file: str = ""
    schedule_grace_seconds: float = 60.0
    tls_cert_file: str = ""
    tls_key_file: str = ""
    dispatcher_ca_file: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Parse every known key of `env` (default: os.environ after loading .env)."""
        origin: dict[str, str] = {}
        if env is None:
            from_shell = set(os.environ)
            load_dotenv_file()
            env = os.environ
            dotenv = str(PROJECT_ROOT / ".env")
            origin = {k: "the environment" if k in from_shell else dotenv for k in env}
        try:
            values = {}
            for f in fields(cls):
                key = f.name.upper()
                if key in env:
                    values[f.name] = _parse(key, env[key], type(f.default))
            config = cls(**values)
            config.check()
        except ConfigError as exc:
            key = str(exc).split(" ", 1)[0].rstrip(":")
            if key in origin:  # say where the bad value came from
                raise ConfigError(f"{exc} (set in {origin[key]})") from None
            raise
        return config

    def check(self) -> None:
        """Cross-field and range checks; raises ConfigError naming the key."""
        positive = (
            "lease_seconds",
            "worker_dead_after",
            "worker_heartbeat_interval",
            "worker_poll_interval",
            "worker_concurrency",
            "cache_ttl_seconds",
            "cache_retry_interval",
            "primes_max_limit",
            "trial_division_max_limit",
            "default_task_timeout",
            "max_request_bytes",
            "dispatcher_processes",
            "dispatcher_connections",
            "dispatcher_read_timeout",
            "max_batch",
            "reap_interval",
            "retry_backoff_cap",
            "worker_breaker_failures",
            "worker_breaker_max_backoff",
            "schedule_grace_seconds",
            "audit_retention_seconds",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.upper()} must be greater than 0")
        if self.default_task_timeout > 7 * 86_400:
            raise ConfigError("DEFAULT_TASK_TIMEOUT must be at most 604800 (7 days)")
        if self.default_max_retries > 100:
            raise ConfigError("DEFAULT_MAX_RETRIES must be at most 100")
        if self.worker_poll_interval > self.max_wait_seconds:
            raise ConfigError(
                "WORKER_POLL_INTERVAL must not exceed MAX_WAIT_SECONDS "
                f"({self.max_wait_seconds:g}), the longest poll the dispatcher holds"
            )
        if not 0 < self.dispatcher_port < 65536:
            raise ConfigError("DISPATCHER_PORT must be between 1 and 65535")
        if not 0 <= self.worker_metrics_port < 65536:
            raise ConfigError("WORKER_METRICS_PORT must be between 0 (off) and 65535")
        if self.log_level.upper() not in LOG_LEVELS:
            raise ConfigError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(
                f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, not {self.log_format!r}"
            )
        if self.worker_prefetch != "auto":
            try:
                if int(self.worker_prefetch) < 0:
                    raise ValueError
            except ValueError:
                raise ConfigError(
                    f"WORKER_PREFETCH must be 'auto' or a whole number >= 0, "
                    f"not {self.worker_prefetch!r}"
                ) from None
        if not self.queues:
            raise ConfigError("WORKER_QUEUES must name at least one queue")
        if len(self.queues) > MAX_QUEUES:
            raise ConfigError(f"WORKER_QUEUES must name at most {MAX_QUEUES} queues")
        try:
            split_urls(self.dispatcher_url)
        except ValueError as exc:
            raise ConfigError(
                f"DISPATCHER_URL: {exc} (one http(s) URL, or several separated by commas)"
            ) from None
        self.http_request_allow_list  # noqa: B018 - parses it once, or raises ConfigError
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            given, missing = (
                ("TLS_CERT_FILE", "TLS_KEY_FILE")
                if self.tls_cert_file
                else ("TLS_KEY_FILE", "TLS_CERT_FILE")
            )
            raise ConfigError(f"{missing} must be set when {given} is (both or neither)")
        if self.dispatcher_ca_file:
            _check_ca_file(self.dispatcher_ca_file)
        if self.api_token.strip() and not any(t.strip() for t in self.api_token.split(",")):
            raise ConfigError("API_TOKEN holds no token (only commas and blanks)")
        if not self.database_url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ConfigError(
                "DATABASE_URL must be sqlite:///relative/path.db, "
                "sqlite:////absolute/path.db or postgresql://..."
            )

    # -- derived values -------------------------------------------------------------

    @property
    def queues(self) -> tuple[str, ...]:
        return tuple(q.strip() for q in self.worker_queues.split(",") if q.strip())

    @property
    def dispatcher_urls(self) -> list[str]:
        """DISPATCHER_URL as a list (it may name several dispatchers, comma-separated)."""
        return split_urls(self.dispatcher_url)

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(m.strip() for m in self.task_modules.split(",") if m.strip())

    @cached_property
    def http_request_allow_list(self) -> HostAllowList:
        """HTTP_REQUEST_ALLOWED_HOSTS parsed, once per Config (check() does it at start)."""
        try:
            return HostAllowList.parse(self.http_request_allowed_hosts)
        except ValueError as exc:
            raise ConfigError(f"HTTP_REQUEST_ALLOWED_HOSTS: {exc}") from None

    @property
    def prefetch(self) -> int | None:
        """A fixed prefetch, or None for `auto`."""
        return None if self.worker_prefetch == "auto" else int(self.worker_prefetch)

    def check_tokens_file(self) -> None:
        """API_TOKENS_FILE: readable, and every line a token (ConfigError naming the file
        and the line). The dispatcher and `python -m common.config` call this."""
        if not self.api_tokens_file:
            return
        from .tokens_file import TokensFileError, read_file

        try:
            read_file(self.api_tokens_file)
        except TokensFileError as exc:
            raise ConfigError(f"API_TOKENS_FILE {exc}") from None

    def check_tls(self) -> None:
        """The dispatcher's TLS_CERT_FILE and TLS_KEY_FILE: readable, and a key that
        matches the certificate (loaded as the server will load them). ConfigError
        naming the setting otherwise. Only the dispatcher calls this."""
        if not self.tls_cert_file:
            return
        import ssl

        files = (("TLS_CERT_FILE", self.tls_cert_file), ("TLS_KEY_FILE", self.tls_key_file))
        for key, path in files:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise ConfigError(f"{key}: cannot read {path!r} ({exc.strerror})") from None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
        except ssl.SSLError as exc:
            if "KEY_VALUES_MISMATCH" in str(exc) or exc.reason == "KEY_VALUES_MISMATCH":
                raise ConfigError(
                    f"TLS_KEY_FILE: {self.tls_key_file!r} is not the key of the "
                    f"certificate in TLS_CERT_FILE {self.tls_cert_file!r}"
                ) from None
            raise ConfigError(
                f"TLS_CERT_FILE / TLS_KEY_FILE: cannot load {self.tls_cert_file!r} with "
                f"{self.tls_key_file!r} as a PEM certificate and key ({exc.reason or exc})"
            ) from None

    def database_path(self) -> Path:
        """The SQLite file DATABASE_URL names (relative paths are from the project root)."""
        rest = self.database_url[len("sqlite:///") :]
        path = Path(rest)
        return path if path.is_absolute() else PROJECT_ROOT / path

    def cache_dir(self) -> Path:
        path = Path(self.worker_cache_dir)
        return path if path.is_absolute() else PROJECT_ROOT / path

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces this configuration in a child process."""
        return {f.name.upper(): str(getattr(self, f.name)) for f in fields(self)}


def _check_ca_file(path: str) -> None:
    """DISPATCHER_CA_FILE: a readable PEM bundle holding at least one certificate."""
    import ssl

    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError:  # (an OSError too: first)
        raise ConfigError(
            f"DISPATCHER_CA_FILE: {path!r} holds no PEM certificate (a bundle of the "
            "certificates to trust)"
        ) from None
    except OSError as exc:
        why = exc.strerror or exc
        raise ConfigError(f"DISPATCHER_CA_FILE: cannot read {path!r} ({why})") from None


def load_dotenv_file() -> None:
    from dotenv import load_dotenv

    load_dotenv(PROJECT_ROOT / ".env", override=False)


def _parse(key: str, raw: str, kind: type):
    text = raw.strip()
    if kind is str:
        return text
    try:
        value = kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{key} must be {what}, not {raw!r}") from None
    if value < 0 or value != value:  # negative or NaN
        raise ConfigError(f"{key} must not be negative, not {raw!r}")
    return value


def print_config_error(exc: ConfigError | ImportError) -> int:
    """Print the one line that names the bad setting and return the exit status for it,
    2. An ImportError is a module of TASK_MODULES that would not load."""
    what = f"TASK_MODULES: {exc}" if isinstance(exc, ImportError) else exc
    print(f"configuration error: {what}", file=sys.stderr)
    return 2


def main() -> int:
    """`python -m common.config`: exit 0 when the configuration is valid, else print the
    one line that names the bad key and exit 2 (start_cluster.sh checks before starting)."""
    try:
        Config.from_env().check_tokens_file()
    except ConfigError as exc:
        return print_config_error(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
