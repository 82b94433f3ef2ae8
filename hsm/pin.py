"""Where the service gets its token user PIN: so no PIN sits in a plain-text file when a TPM is there.

A :class:`PinSource` yields the PIN on demand (``get_pin()``), says what it is without revealing
it (``describe()``, for status output and ``csm init``) and names itself as a config string
(``spec()``, parsed back by :func:`pin_source_from_spec`).

Sources
    :class:`TpmSealedPin` — the PIN sealed to a TPM 2.0 (see :mod:`hsm.tpm`); unsealed afresh on
    every ``get_pin()`` (the service calls it once per process at start-up).
    :class:`FilePin` — a file that only its owner may access (mode 0600/0400); any group/other
    permission bit makes ``get_pin()`` refuse it.
    :class:`EnvPin` — an environment variable (left in place, so forked workers can read it too).

PIN source spec grammar (``hsm_pin_source`` / ``CSM_HSM_PIN_SOURCE``)::

    spec      = tpm-spec / file-spec / env-spec          ; surrounding whitespace is ignored
    tpm-spec  = "tpm:" blob-path [ "@" tcti ]
    file-spec = "file:" path                             ; the rest of the string, verbatim
    env-spec  = "env:" NAME                              ; NAME = [A-Za-z_][A-Za-z0-9_]*

    blob-path : absolute path of the sealed blob, ending at the FIRST "@"; a literal "@" in the
                path is written "%40" and a literal "%" may be written "%25" (spec() always does)
    tcti      : everything after that "@", verbatim (TCTI strings contain ":" and may contain
                "@"), e.g. "device:/dev/tpmrm0", "tabrmd:bus_type=system",
                "swtpm:host=127.0.0.1,port=2321"; default "device:/dev/tpmrm0"
    path      : absolute path

Examples: ``tpm:/var/lib/csm/hsm/user-pin.sealed@device:/dev/tpmrm0``,
``file:/run/secrets/csm-pin``, ``env:CSM_TOKEN_PIN``. A malformed spec raises ``ValueError``.

Failures to obtain a PIN raise :class:`PinUnavailable` (a :class:`~hsm.errors.SealError`), or the
:mod:`hsm.tpm` errors (``TpmUnavailable``, ``PolicyMismatch``, ``SealError``) for a sealed PIN.
No message, repr or log line ever contains a PIN.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol, runtime_checkable

from .errors import PinUnavailable as PinUnavailable  # re-exported: it used to be defined here
from .errors import SealError

log = logging.getLogger(__name__)

#: TCTI used when a ``tpm:`` spec names none.
DEFAULT_TCTI: Final = "device:/dev/tpmrm0"
#: File names :func:`provision_pin` writes into its data directory.
SEALED_PIN_FILE: Final = "user-pin.sealed"
PLAIN_PIN_FILE: Final = "user-pin"
#: Random bytes behind a generated PIN (``secrets.token_urlsafe``: 32 characters, 192 bits).
PIN_BYTES: Final = 24

_ENV_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TCTI: Final = re.compile(r"^[A-Za-z0-9_.+-]+(?::.*)?$", re.DOTALL)


@runtime_checkable
class PinSource(Protocol):
    """Yields the token user PIN."""

    def get_pin(self) -> str:
        """The PIN (non-empty). Raises :class:`PinUnavailable` or an :mod:`hsm.tpm` error."""
        ...

    def describe(self) -> str:
        """One line for status output and the operator: where the PIN lives, never the PIN."""
        ...

    def spec(self) -> str:
        """This source as a config string that :func:`pin_source_from_spec` parses back."""
        ...


def generate_pin() -> str:
    """A fresh random PIN (also suitable as an SO PIN): 32 URL-safe characters from ``secrets``."""
    return secrets.token_urlsafe(PIN_BYTES)


# --------------------------------------------------------------------------------------------
# sources


@dataclass(frozen=True)
class EnvPin:
    """The PIN is the value of the environment variable ``var`` (read on each ``get_pin()``)."""

    var: str

    def __post_init__(self) -> None:
        if not isinstance(self.var, str) or not _ENV_NAME.match(self.var):
            raise ValueError(f"invalid environment variable name {self.var!r}")

    def get_pin(self) -> str:
        value = os.environ.get(self.var)
        if not value:
            raise PinUnavailable(f"the environment variable {self.var} holding the token PIN is "
                                 f"{'empty' if value == '' else 'not set'}", source=self.describe())
        return value

    def describe(self) -> str:
        return f"read from the environment variable {self.var}"

    def spec(self) -> str:
        return f"env:{self.var}"


@dataclass(frozen=True)
class FilePin:
    """The PIN is the content of ``path`` (one trailing newline stripped).

    ``get_pin()`` refuses (PinUnavailable) anything but a regular file, and any file with a
    group/other permission bit set: chmod 600 it. The check is made on the opened file.
    """

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def get_pin(self) -> str:
        try:
            # O_NONBLOCK: a FIFO planted at the path must not hang start-up (it is refused below).
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
        except OSError as exc:
            raise PinUnavailable(f"cannot open the PIN file {self.path}: {exc.strerror}",
                                 source=self.describe()) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise PinUnavailable(f"the PIN file {self.path} is not a regular file", source=self.describe())
            if st.st_mode & 0o077:
                raise PinUnavailable(
                    f"refusing the PIN file {self.path}: its mode {stat.S_IMODE(st.st_mode):04o} lets group or "
                    f"others access it (chmod 600 {self.path})", source=self.describe())
            data = os.read(fd, 4096 + 1)
        finally:
            os.close(fd)
        if len(data) > 4096:
            raise PinUnavailable(f"the PIN file {self.path} is too large to hold a PIN", source=self.describe())
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise PinUnavailable(f"the PIN file {self.path} is not UTF-8 text", source=self.describe()) from None
        pin = _strip_newline(text)
        if not pin:
            raise PinUnavailable(f"the PIN file {self.path} is empty", source=self.describe())
        return pin

    def describe(self) -> str:
        return f"stored in plain text in {self.path}"

    def spec(self) -> str:
        return f"file:{self.path.absolute()}"


@dataclass(frozen=True)
class TpmSealedPin:
    """The PIN is sealed to the TPM at ``tcti``; ``blob_path`` holds the :class:`~hsm.tpm.SealedBlob`.

    Every ``get_pin()`` reads the blob and unseals it (one TPM round trip of a few tens of ms):
    :class:`~hsm.errors.TpmUnavailable` if the TPM cannot be reached,
    :class:`~hsm.errors.PolicyMismatch` if the PCRs it is bound to have changed,
    :class:`PinUnavailable` if the blob file is missing, :class:`~hsm.errors.SealError` otherwise.
    """

    blob_path: Path
    tcti: str = DEFAULT_TCTI

    def __post_init__(self) -> None:
        object.__setattr__(self, "blob_path", Path(self.blob_path))
        if not isinstance(self.tcti, str) or not _TCTI.match(self.tcti):
            raise ValueError(f"invalid TCTI string {self.tcti!r}: expected name[:config], e.g. {DEFAULT_TCTI}")

    def get_pin(self) -> str:
        from .tpm import SealedBlob, TpmSealer

        try:
            data = self.blob_path.read_bytes()
        except OSError as exc:
            raise PinUnavailable(f"cannot read the sealed PIN {self.blob_path}: {exc.strerror}",
                                 source=self.describe()) from None
        secret = TpmSealer(self.tcti).unseal(SealedBlob.from_bytes(data))
        try:
            pin = secret.decode("utf-8")
        except UnicodeDecodeError:
            raise SealError(f"the secret sealed in {self.blob_path} is not a UTF-8 PIN") from None
        if not pin:
            raise PinUnavailable(f"the PIN sealed in {self.blob_path} is empty", source=self.describe())
        return pin

    def describe(self) -> str:
        return f"sealed to the TPM at {self.tcti} ({_describe_policy(self.blob_path)}) in {self.blob_path}"

    def spec(self) -> str:
        return f"tpm:{_encode_path(str(self.blob_path.absolute()))}@{self.tcti}"


def _strip_newline(text: str) -> str:
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def _describe_policy(blob_path: Path) -> str:
    """Best effort, no TPM access: the PCR binding recorded in the blob file."""
    try:
        doc = json.loads(blob_path.read_bytes())
        pcrs = doc.get("pcrs") if isinstance(doc, dict) else None
    except (OSError, ValueError):
        return "blob unreadable"
    return f"bound to PCRs {pcrs}" if isinstance(pcrs, str) else "no PCR policy"


def _encode_path(path: str) -> str:
    return path.replace("%", "%25").replace("@", "%40")


def _decode_path(text: str) -> str:
    return re.sub(r"%(25|40)", lambda m: "%" if m.group(1) == "25" else "@", text)


# --------------------------------------------------------------------------------------------
# spec parsing


def pin_source_from_spec(spec: str) -> PinSource:
    """Parse a PIN source spec (grammar in the module docstring); ``ValueError`` if malformed.

    Parsing never touches the file, the environment or the TPM.
    """
    if not isinstance(spec, str):
        raise TypeError(f"a PIN source spec must be a str, not {type(spec).__name__}")
    text = spec.strip()
    kind, sep, rest = text.partition(":")
    if not sep:
        raise ValueError(f"invalid PIN source {spec!r}: expected tpm:<blob-path>[@<tcti>], file:<path> or env:<VAR>")
    if kind == "env":
        if not _ENV_NAME.match(rest):
            raise ValueError(f"invalid PIN source {spec!r}: env: needs a variable name like CSM_TOKEN_PIN")
        return EnvPin(rest)
    if kind == "file":
        if not os.path.isabs(rest):
            raise ValueError(f"invalid PIN source {spec!r}: file: needs an absolute path")
        return FilePin(Path(rest))
    if kind == "tpm":
        raw_path, at, tcti = rest.partition("@")
        path = _decode_path(raw_path)
        if not os.path.isabs(path):
            raise ValueError(f"invalid PIN source {spec!r}: tpm: needs an absolute blob path")
        if at and not tcti:
            raise ValueError(f"invalid PIN source {spec!r}: empty TCTI after '@'")
        if at and not _TCTI.match(tcti):
            raise ValueError(f"invalid PIN source {spec!r}: {tcti!r} is not a TCTI string (name[:config])")
        return TpmSealedPin(Path(path), tcti if at else DEFAULT_TCTI)
    raise ValueError(f"invalid PIN source {spec!r}: unknown kind {kind!r} (tpm, file or env)")


# --------------------------------------------------------------------------------------------
# provisioning (csm init)


def provision_pin(data_dir: Path, tcti: str | None, pcrs: str | None = None) -> tuple[PinSource, str]:
    """Create a new random token user PIN and store it; return ``(source, description)``.

    With a ``tcti`` the PIN is sealed to that TPM (bound to ``pcrs`` if given, e.g.
    ``"sha256:7"``), checked by unsealing it once, and the blob written to
    ``data_dir/user-pin.sealed``; TPM errors propagate (no silent fallback to a file). Without
    one it is written in plain text to ``data_dir/user-pin``, and the description says so.
    Files are created 0600 and atomically; ``data_dir`` is created 0700. An existing PIN file is
    never overwritten: it is renamed ``<name>.<UTC timestamp>.old`` (it may still unlock a token).
    ``description`` is for the operator and never contains the PIN. The SO PIN is the caller's:
    use :func:`generate_pin`.
    """
    if pcrs is not None and tcti is None:
        raise ValueError("PCR binding (pcrs) needs a TPM (tcti)")
    data_dir = Path(data_dir).absolute()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    pin = generate_pin()
    source: PinSource
    if tcti is not None:
        from .tpm import TpmSealer, parse_pcr_selection

        canonical = parse_pcr_selection(pcrs) if pcrs is not None else None
        sealer = TpmSealer(tcti)
        blob = sealer.seal(pin.encode("utf-8"), canonical)
        if sealer.unseal(blob) != pin.encode("utf-8"):
            raise SealError("the TPM returned a different secret than was sealed")
        path = data_dir / SEALED_PIN_FILE
        _write_private(path, blob.to_bytes())
        source = TpmSealedPin(path, tcti)
        description = (f"sealed to the TPM at {tcti}"
                       + (f", bound to PCRs {canonical}" if canonical else " (no PCR policy)")
                       + f"; sealed blob in {path}")
    else:
        path = data_dir / PLAIN_PIN_FILE
        _write_private(path, (pin + "\n").encode("utf-8"))
        source = FilePin(path)
        description = (f"stored in PLAIN TEXT in {path} (mode 0600) because no TPM was given: anyone who can "
                       "read that file or a backup of it can use the token; give a TPM (TCTI) to seal it instead")
    log.info("provisioned a new token PIN: %s", description)
    return source, description


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 via a temporary file and rename; keep any old file."""
    if path.exists() or path.is_symlink():
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        old = path.with_name(f"{path.name}.{stamp}.old")
        os.rename(path, old)
        log.warning("kept the previous PIN file as %s", old)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
