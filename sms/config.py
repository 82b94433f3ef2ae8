"""Configuration: CLI flags over ``CSM_*`` environment variables over a config file over defaults.

Every setting is declared once in :data:`SETTINGS` (name, type, default, help); the CLI,
the environment reader, the config-file reader and the README table all derive from it.
The config file is TOML (``--config`` / ``CSM_CONFIG``, default ``<data_dir>/csm.toml`` if it
exists) with the same keys as the settings names.

No setting holds a PIN or token: those come from a PIN source (``hsm_pin_source``) and the
token files, and :class:`Settings` has no field that could leak one into a repr.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

ENV_PREFIX = "CSM_"


def _s(default: Any, help: str, *, kind: type = str, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "kind": kind, "choices": choices})


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), not all the machine has."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class Settings:
    data_dir: str = _s("./csm-data", "Directory for the database, SoftHSM token, TLS files and root token.")
    database_url: str = _s("", "SQLAlchemy URL; empty = SQLite at <data_dir>/csm.db. PostgreSQL: postgresql+psycopg://user@host/db")
    host: str = _s("127.0.0.1", "Address to listen on.")
    port: int = _s(8443, "Port to listen on.", kind=int)
    plain_http: bool = _s(False, "Serve plain HTTP instead of HTTPS (allowed only on a loopback address).", kind=bool)
    tls_cert: str = _s("", "Server certificate (PEM); empty = <data_dir>/tls/server.crt, issued at start-up.")
    tls_key: str = _s("", "Server private key (PEM, mode 0600); empty = <data_dir>/tls/server.key.")
    tls_client_ca: str = _s("", "PEM bundle of trust anchors for client certificates; enables client-certificate requests.")
    tls_client_required: bool = _s(False, "Refuse TLS connections without a valid client certificate.", kind=bool)
    tls_cert_days: int = _s(7, "Lifetime of the bootstrap TLS server certificate, in days (re-issued when 1/3 is left).", kind=int)
    hsm_module: str = _s("/usr/lib/softhsm/libsofthsm2.so", "PKCS#11 module path (SoftHSMv2, tpm2-pkcs11 or a vendor module).")
    hsm_token_label: str = _s("csm", "Label of the PKCS#11 token.")
    hsm_pin_source: str = _s("", "Where the token user PIN comes from: tpm:<blob>@<tcti>, env:VAR or file:PATH; empty = what `csm init` provisioned.")
    hsm_tpm_tcti: str = _s("", "TCTI of a TPM 2.0 used to seal the PIN at init (e.g. device:/dev/tpmrm0); empty = auto-detect /dev/tpmrm0.")
    hsm_tpm_pcrs: str = _s("", "PCRs the sealed PIN is bound to at init (e.g. sha256:0,7); unsealing fails once they change. Empty = no PCR policy.")
    hsm_lock: str = _s("os", "PKCS#11 locking: 'os' (module locking, one session per thread) or 'global' (one process-wide lock).", choices=("os", "global"))
    server: str = _s("granian", "WSGI server: granian (fastest) or gunicorn (needed for client-certificate identities).", choices=("granian", "gunicorn"))
    workers: int = _s(0, "Worker processes (each opens its own PKCS#11 session after the fork); 0 = one more than the CPUs this process may use, at most 8.", kind=int)
    threads: int = _s(8, "Threads per worker.", kind=int)
    fast_routes: bool = _s(True, "Serve the plain success case of the hottest routes (secret read and replace, CA sign, CMP) without Flask; identical answers, less CPU.", kind=bool)
    max_body_bytes: int = _s(1048576, "Largest accepted request body, in bytes.", kind=int)
    token_ttl: int = _s(3600, "Default TTL of new tokens, in seconds.", kind=int)
    token_max_ttl: int = _s(86400 * 32, "Maximum lifetime of a token including renewals, in seconds.", kind=int)
    auth_cache_ttl: int = _s(1, "Seconds a resolved token stays cached in a worker (0 = off). A revoke on another instance applies within this time.", kind=int)
    sqlite_synchronous: str = _s("FULL", "SQLite only. FULL: every commit is fsynced (survives power loss). NORMAL: fsync at checkpoints only; crash-safe, but the last commits before a power loss may be lost.", choices=("FULL", "NORMAL"))
    audit_sync: str = _s("journal", "How audit entries reach the hash chain. journal: a read's entry is appended to the worker's journal file and a write's entry committed into the outbox with the write, before the answer; both are linked and MAC'd in the chain within audit_fold_ms (a power loss can lose that window of journal lines, as with OpenBao's file audit). commit: every entry is linked, MAC'd and fsynced in the chain before the answer (slower).", choices=("journal", "commit"))
    audit_fold_ms: int = _s(200, "How often a worker folds its audit journal into the chain, in milliseconds.", kind=int)
    audit_batch_max: int = _s(256, "Most audit entries committed (and MAC'd once) in one transaction; 1 = one transaction per entry.", kind=int)
    log_level: str = _s("INFO", "Log level.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    onap_compat_errors: bool = _s(True, "ONAP SMS routes answer 500 where ONAP's clients expect it (instead of 404/409).", kind=bool)
    # ---- secrets feature ----
    secrets_backend: str = _s("sql", "Where sealed secrets live: sql (the database above) or vault (an OpenBao/Vault KV v2 mount).", choices=("sql", "vault"))
    secrets_max_versions: int = _s(10, "Versions kept per secret unless the secret or its domain says otherwise (1-100).", kind=int)
    secrets_ref_ttl_max: int = _s(3600, "Longest lifetime of a one-time secret reference, in seconds.", kind=int)
    vault_addr: str = _s("", "OpenBao/Vault address for secrets_backend=vault, e.g. https://127.0.0.1:8200.")
    vault_mount: str = _s("csm", "KV v2 mount that holds csm's sealed secrets (created if missing).")
    vault_token_source: str = _s("", "Where the OpenBao/Vault token comes from: env:VAR or file:PATH (never the token itself).")
    vault_ca_cert: str = _s("", "CA bundle to verify OpenBao/Vault's TLS certificate; empty = system trust.")
    onap_anonymous_policies: str = _s("", "Comma-separated policies granted to callers of the ONAP /v1/sms routes that present no token or client certificate; empty = refuse them (401).")
    cmp_max_body_bytes: int = _s(65536, "Largest accepted CMP message (POST /.well-known/cmp), in bytes.", kind=int)
    cmp_http_port: int = _s(0, "Port of an extra plain-HTTP listener that serves only /.well-known/cmp (RFC 6712, for CMP clients without TLS; CMP protects its messages itself); 0 = off.", kind=int)
    cmp_http_host: str = _s("", "Address of the plain-HTTP CMP listener; empty = host (which must then be a loopback address). Set it explicitly to expose CMP over plain HTTP on the network.")
    client_cert_rules: str = _s("", "JSON file mapping client-certificate subjects/SANs to policies (needs --server gunicorn and --tls-client-ca).")
    # ---- certificate authority ----
    ca_public_url: str = _s("", "Base URL written into issued certificates for the CRL distribution point, OCSP and CA issuers (built-in profiles); empty = the service URL.")
    tls_ca: str = _s("", "CA (by name) that issues the service's own TLS certificate; empty = the bootstrap CA.")
    tls_profile: str = _s("tls-server", "Profile of tls_ca used for the service's own TLS certificate.")

    # ---- derived paths -------------------------------------------------------------
    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def effective_workers(self) -> int:
        """``workers``, or with 0 one more than the CPUs available (a worker's Python runs one
        thread at a time; the extra one keeps every core busy while another waits), at most 8."""
        if self.workers > 0:
            return self.workers
        return min(usable_cpus() + 1, 8)

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_path / 'csm.db'}"

    @property
    def softhsm_conf(self) -> Path:
        return self.data_path / "softhsm" / "softhsm2.conf"

    @property
    def tls_dir(self) -> Path:
        return self.data_path / "tls"

    @property
    def tls_cert_path(self) -> Path:
        return Path(self.tls_cert) if self.tls_cert else self.tls_dir / "server.crt"

    @property
    def tls_key_path(self) -> Path:
        return Path(self.tls_key) if self.tls_key else self.tls_dir / "server.key"

    @property
    def root_token_path(self) -> Path:
        return self.data_path / "root-token"

    @property
    def scheme(self) -> str:
        return "http" if self.plain_http else "https"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def cmp_http_url(self) -> str:
        """Base URL of the plain-HTTP CMP listener ('' when it is off)."""
        if not self.cmp_http_port:
            return ""
        host = self.cmp_http_host or self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.cmp_http_port}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Settings:
        return cls(**json.loads(text))


SETTINGS = [f for f in fields(Settings)]


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _coerce(name: str, kind: type, value: Any, source: str) -> Any:
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if kind is int:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if not isinstance(value, (str, int, float)):
            raise ValueError(value)
        return str(value)
    except ValueError:
        raise ConfigError(f"{source}: {name} must be a {kind.__name__}") from None


def load_settings(
    cli: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> Settings:
    """Merge the four layers. ``cli`` holds only flags the user actually gave (None = not given)."""
    env = os.environ if env is None else env
    cli = {k: v for k, v in (cli or {}).items() if v is not None}
    by_name = {f.name: f for f in SETTINGS}
    values: dict[str, Any] = {}

    # data_dir decides where the default config file lives, so resolve it first.
    data_dir = cli.get("data_dir") or env.get(env_name("data_dir")) or Settings.data_dir
    path = config_file or cli.get("config") or env.get(ENV_PREFIX + "CONFIG")
    if path is None:
        candidate = Path(data_dir).expanduser() / "csm.toml"
        path = candidate if candidate.exists() else None
    if path is not None:
        p = Path(path)
        try:
            doc = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
        unknown = sorted(set(doc) - set(by_name))
        if unknown:
            raise ConfigError(f"config file {p}: unknown setting(s) {', '.join(unknown)}")
        for k, v in doc.items():
            values[k] = _coerce(k, by_name[k].metadata["kind"], v, str(p))
    for name, f in by_name.items():
        if env_name(name) in env:
            values[name] = _coerce(name, f.metadata["kind"], env[env_name(name)], env_name(name))
    for name, v in cli.items():
        if name in by_name:
            values[name] = _coerce(name, by_name[name].metadata["kind"], v, flag_name(name))
    for name, v in values.items():
        choices = by_name[name].metadata["choices"]
        if choices and v not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}")
    settings = Settings(**values)
    validate(settings)
    return settings


_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def validate(s: Settings) -> None:
    if s.plain_http and not (s.host in _LOOPBACK or s.host.startswith("127.")):
        raise ConfigError("plain HTTP is allowed only on a loopback address (use --host 127.0.0.1)")
    if not (0 < s.port < 65536):
        raise ConfigError("port must be between 1 and 65535")
    if not (0 <= s.cmp_http_port < 65536):
        raise ConfigError("cmp_http_port must be between 0 (off) and 65535")
    if s.cmp_http_port:
        if not s.cmp_http_host and not (s.host in _LOOPBACK or s.host.startswith("127.")):
            raise ConfigError("the plain-HTTP CMP listener takes host only if it is a loopback address; "
                              "set cmp_http_host to serve CMP over plain HTTP on another address")
        if s.cmp_http_port == s.port and (s.cmp_http_host or s.host) == s.host:
            raise ConfigError("cmp_http_port must differ from port")
    if s.workers < 0 or s.threads < 1:
        raise ConfigError("workers must be 0 (automatic) or more, threads at least 1")
    if s.max_body_bytes < 1024:
        raise ConfigError("max_body_bytes must be at least 1024")
    if s.token_ttl < 1 or s.token_max_ttl < s.token_ttl:
        raise ConfigError("token_ttl must be positive and at most token_max_ttl")
    if s.hsm_pin_source:
        from hsm.pin import pin_source_from_spec

        try:  # parsing only: no file, variable or TPM is touched here
            pin_source_from_spec(s.hsm_pin_source)
        except ValueError as exc:
            raise ConfigError(f"hsm_pin_source: {exc}") from None
    if s.hsm_tpm_pcrs:
        from hsm.tpm import parse_pcr_selection

        try:
            parse_pcr_selection(s.hsm_tpm_pcrs)
        except ValueError as exc:
            raise ConfigError(f"hsm_tpm_pcrs: {exc}") from None


def settings_table_markdown() -> str:
    """The README's settings table, generated from :data:`SETTINGS`."""
    rows = ["| setting (config key) | CLI flag | environment | default | meaning |", "|---|---|---|---|---|"]
    for f in SETTINGS:
        default = f.default
        shown = "`" + json.dumps(default) + "`" if default != "" else "(empty)"
        rows.append(f"| `{f.name}` | `{flag_name(f.name)}` | `{env_name(f.name)}` | {shown} | {f.metadata['help']} |")
    return "\n".join(rows)
