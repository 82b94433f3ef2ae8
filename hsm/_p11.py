"""Process-wide PKCS#11 plumbing under :class:`hsm.keystore.KeyStore` (private module).

What lives here, and why:

* **One module context per process.** python-pkcs11 0.10.1 calls ``C_Initialize(NULL)``, which
  tells SoftHSMv2 to switch its own locking off; two threads then crash it. :class:`Module`
  initialises the ``.so`` itself through ctypes with ``CKF_OS_LOCKING_OK`` and hands python-pkcs11
  an already-initialised library. A context is bound to the process that created it: after a
  fork the child finalises the copy it inherited and initialises afresh (a parent's context,
  sessions, login and object handles are never reused).
* **Lock modes.** ``LockMode.OS``: the module does its own locking and every thread works in its
  own session. ``LockMode.GLOBAL``: one process-wide lock around every PKCS#11 call, for vendor
  modules of unknown thread safety (also the fallback when a module answers ``CKR_CANT_LOCK``).
* **One login per process and token** (:class:`TokenConn`), a bounded pool of extra sessions,
  each with its own cache of key objects (handles), and the unavailability / recovery machine:
  a token that goes away turns into :class:`~hsm.errors.TokenUnavailable`; the next call after a
  short, growing back-off drains in-flight calls, re-initialises the module and logs in again.

Nothing here logs or formats a PIN or key material.
"""
from __future__ import annotations

import collections
import ctypes
import enum
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final

import pkcs11._pkcs11 as _native
from pkcs11 import exceptions as px

from .errors import (
    DecryptionFailed,
    HsmError,
    KeyNotExtractable,
    MechanismUnsupported,
    TokenNotInitialized,
    TokenUnavailable,
    WrongKeyType,
    WrongPin,
)

log = logging.getLogger(__name__)

CKR_OK: Final = 0x0
CKR_CANT_LOCK: Final = 0xA
CKR_CRYPTOKI_NOT_INITIALIZED: Final = 0x190
CKR_CRYPTOKI_ALREADY_INITIALIZED: Final = 0x191
CKF_OS_LOCKING_OK: Final = 0x2

#: How long a caller waits for in-flight calls to finish before a re-initialisation (s).
DRAIN_TIMEOUT: Final = 5.0
#: How long a caller waits for a free session when the pool is exhausted (s).
CHECKOUT_TIMEOUT: Final = 30.0


class LockMode(enum.Enum):
    """How concurrent PKCS#11 calls are made safe within one process."""

    OS = "os"          #: the module locks (CKF_OS_LOCKING_OK); one session per concurrent caller
    GLOBAL = "global"  #: one process-wide lock around every call (modules of unknown thread safety)


# --------------------------------------------------------------------------------------------
# Loading and initialising a module through ctypes
# --------------------------------------------------------------------------------------------

class _CInitializeArgs(ctypes.Structure):
    # CK_C_INITIALIZE_ARGS: no mutex callbacks (NULL) + CKF_OS_LOCKING_OK = "use the OS's locks"
    _fields_ = [
        ("CreateMutex", ctypes.c_void_p),
        ("DestroyMutex", ctypes.c_void_p),
        ("LockMutex", ctypes.c_void_p),
        ("UnlockMutex", ctypes.c_void_p),
        ("flags", ctypes.c_ulong),
        ("pReserved", ctypes.c_void_p),
    ]


class _CVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte)]


class _CFunctionListHead(ctypes.Structure):
    # The first members of CK_FUNCTION_LIST (Unix: natural alignment, no packing).
    _fields_ = [("version", _CVersion), ("C_Initialize", ctypes.c_void_p), ("C_Finalize", ctypes.c_void_p)]


_CK_INIT_FN = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_void_p)


class _RawModule:
    """The module's C_Initialize / C_Finalize, reached through its function list (ctypes)."""

    def __init__(self, path: str) -> None:
        self.cdll = ctypes.CDLL(path)
        get_list = self.cdll.C_GetFunctionList
        get_list.restype = ctypes.c_ulong
        get_list.argtypes = [ctypes.POINTER(ctypes.POINTER(_CFunctionListHead))]
        head = ctypes.POINTER(_CFunctionListHead)()
        rv = get_list(ctypes.byref(head))
        if rv != CKR_OK or not head:
            raise TokenUnavailable(f"the PKCS#11 module {path!r} returned no function list (rv=0x{rv:x})")
        self._initialize = _CK_INIT_FN(head.contents.C_Initialize)
        self._finalize = _CK_INIT_FN(head.contents.C_Finalize)

    def initialize(self, os_locking: bool) -> int:
        if os_locking:
            args = _CInitializeArgs(flags=CKF_OS_LOCKING_OK)
            return int(self._initialize(ctypes.addressof(args)))
        return int(self._initialize(None))

    def finalize(self) -> int:
        return int(self._finalize(None))


class _Library(_native.lib):
    """python-pkcs11's ``lib`` minus its ``C_Initialize(NULL)``: :class:`Module` initialises the
    module (with locking) before this object is built, and again after a fork or on recovery."""

    def initialize(self) -> None:  # cpdef in Cython: this override is what lib.__init__ calls
        return None

    def unload(self) -> None:
        # A loaded module is never unloaded (see _immortal): dlclose gains nothing and would pull
        # the code from under any thread still inside it.
        return None


def _immortal(lib: _Library) -> _Library:
    """Give ``lib`` one reference that is never dropped. Otherwise its Cython ``__dealloc__`` runs
    in the interpreter's final garbage collection, after its own class was torn down, and Python
    prints "Error in sys.excepthook" at every exit."""
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(lib))
    return lib


# Loaded libraries survive fork (the function pointers stay valid in the child): path -> objects.
_LOADED: dict[str, tuple[_RawModule, _Library | None]] = {}
# Which process last initialised each module through this file: path -> pid.
_INIT_PID: dict[str, int] = {}


def _apply_module_env(env: tuple[tuple[str, str], ...], path: str) -> None:
    for name, value in env:
        current = os.environ.get(name)
        if current == value:
            continue
        if path in _LOADED:
            log.warning("module %s is already loaded in this process; environment variable %s not applied",
                        path, name)
            continue
        os.environ[name] = value


# --------------------------------------------------------------------------------------------
# Error mapping
# --------------------------------------------------------------------------------------------

# Return codes that mean "the token or its context is gone", whatever the operation.
_UNAVAILABLE: Final[tuple[type[BaseException], ...]] = (
    px.DeviceRemoved, px.DeviceError, px.TokenNotPresent, px.TokenNotRecognised,
    px.SessionHandleInvalid, px.SessionClosed, px.UserNotLoggedIn, px.SlotIDInvalid,
)
# Return codes that SoftHSM (and others) also give when the token vanished underneath a session.
AMBIGUOUS: Final[tuple[type[BaseException], ...]] = (
    px.GeneralError, px.FunctionFailed, px.ObjectHandleInvalid, px.KeyHandleInvalid,
    px.WrappingKeyHandleInvalid, px.UnwrappingKeyHandleInvalid,
)
STALE_HANDLE: Final[tuple[type[BaseException], ...]] = (
    px.ObjectHandleInvalid, px.KeyHandleInvalid, px.WrappingKeyHandleInvalid, px.UnwrappingKeyHandleInvalid,
)
DECRYPT_FAILURE: Final[tuple[type[BaseException], ...]] = (
    px.GeneralError, px.EncryptedDataInvalid, px.EncryptedDataLenRange, px.DataLenRange,
    px.WrappedKeyInvalid, px.WrappedKeyLenRange, px.FunctionFailed,
)


def _is_not_initialized(exc: BaseException) -> bool:
    return type(exc) is px.PKCS11Error and "not initialized" in str(exc)


def is_unavailable(exc: BaseException) -> bool:
    """True if ``exc`` on its own proves that the token (or the module context) is unusable."""
    return isinstance(exc, _UNAVAILABLE) or _is_not_initialized(exc)


def map_error(exc: BaseException, what: str) -> HsmError:
    """The :mod:`hsm.errors` leaf for a python-pkcs11 exception (context free). ``what`` names
    the operation for the message; neither PINs nor key bytes ever appear in it."""
    name = type(exc).__name__
    if isinstance(exc, (px.PinIncorrect, px.PinInvalid, px.PinLenRange)):
        return WrongPin("the token refused the PIN")
    if isinstance(exc, px.PinLocked):
        return WrongPin("the token's user PIN is locked")
    if isinstance(exc, px.PinExpired):
        return WrongPin("the token's user PIN has expired")
    if isinstance(exc, px.UserPinNotInitialized):
        return TokenNotInitialized("the token's user PIN is not initialised")
    if is_unavailable(exc):
        return TokenUnavailable(f"{what}: the token is unavailable ({name})")
    if isinstance(exc, (px.MechanismInvalid, px.MechanismParamInvalid, px.FunctionNotSupported,
                        px.TemplateInconsistent, px.TemplateIncomplete, px.AttributeValueInvalid,
                        px.AttributeTypeInvalid, px.KeySizeRange, px.DomainParamsInvalid)):
        return MechanismUnsupported(f"{what}: not supported by this token ({name})")
    if isinstance(exc, (px.KeyUnextractable, px.KeyNotWrappable, px.AttributeSensitive)):
        return KeyNotExtractable(f"{what}: the key cannot leave the token ({name})")
    if isinstance(exc, (px.KeyTypeInconsistent, px.KeyIndigestible, px.WrappingKeyTypeInconsistent,
                        px.UnwrappingKeyTypeInconsistent, px.WrappingKeySizeRange,
                        px.UnwrappingKeySizeRange)):
        return WrongKeyType(f"{what}: the key cannot perform this operation ({name})")
    if isinstance(exc, (px.WrappedKeyInvalid, px.WrappedKeyLenRange, px.EncryptedDataInvalid,
                        px.EncryptedDataLenRange)):
        return DecryptionFailed(f"{what}: authentication failed ({name})")
    if isinstance(exc, px.DeviceMemory):
        return HsmError(f"{what}: the token is out of memory ({name})")
    if isinstance(exc, px.TokenWriteProtected):
        return HsmError(f"{what}: the token is write-protected ({name})")
    return HsmError(f"{what}: PKCS#11 call failed ({name})")


# --------------------------------------------------------------------------------------------
# The per-process module context
# --------------------------------------------------------------------------------------------

class Module:
    """One initialised PKCS#11 module in one process, shared by all its token connections.

    Every PKCS#11 call made through this file is *in flight* either as a checked-out pooled
    session (``PooledSession.active``, set without a lock on the hot path) or as a slow-path
    section (:meth:`calling`, counted in ``busy``), so that :meth:`exclusive` can wait until none
    is before ``C_Finalize``. The hot path and :meth:`exclusive` follow a store-then-check
    protocol (a session is marked active, then ``exclusive_held`` is read; exclusive sets the
    flag, then looks for active sessions), which the GIL keeps sequentially consistent.
    """

    def __init__(self, path: str, lock_mode: LockMode, env: tuple[tuple[str, str], ...]) -> None:
        self.path = path
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.busy = 0
        self.exclusive_held = False
        self.waiters = 0
        self.generation = 0
        self.global_lock: threading.RLock | None = None
        self.conns: list[TokenConn] = []
        #: set once a keypair template had to leave capabilities to the token (tpm2-pkcs11)
        self.relaxed_templates = False
        _apply_module_env(env, path)
        self.os_locking = lock_mode is LockMode.OS
        if lock_mode is LockMode.GLOBAL:
            self.global_lock = threading.RLock()
        self.lib = self._load_and_initialize()

    # -- initialisation ------------------------------------------------------------------------
    def _load_and_initialize(self) -> _Library:
        try:
            raw, lib = _LOADED.get(self.path) or (_RawModule(self.path), None)
        except OSError as exc:
            raise TokenUnavailable(f"cannot load the PKCS#11 module {self.path!r}: {exc.strerror or exc}") from None
        _LOADED[self.path] = (raw, lib)
        self._c_initialize(raw)
        if lib is None:
            try:
                lib = _immortal(_Library(self.path))
            except px.PKCS11Error as exc:
                raise map_error(exc, "loading the PKCS#11 module") from None
            _LOADED[self.path] = (raw, lib)
        return lib

    def _c_initialize(self, raw: _RawModule) -> None:
        pid = os.getpid()
        rv = raw.initialize(self.os_locking)
        if rv == CKR_CRYPTOKI_ALREADY_INITIALIZED:
            owner = _INIT_PID.get(self.path)
            if owner is not None and owner != pid:
                # A fork child holding its parent's context: drop it and start afresh.
                log.debug("re-initialising %s after fork (parent pid %d)", self.path, owner)
                raw.finalize()
                rv = raw.initialize(self.os_locking)
            elif owner is None:
                # Someone else in this process initialised the module (probably without locking).
                log.warning("PKCS#11 module %s was initialised outside hsm; serialising all calls "
                            "with a process-wide lock", self.path)
                self.global_lock = self.global_lock or threading.RLock()
                rv = CKR_OK
        if rv == CKR_CANT_LOCK and self.os_locking:
            log.warning("PKCS#11 module %s cannot use OS locking; serialising all calls with a "
                        "process-wide lock", self.path)
            self.os_locking = False
            self.global_lock = self.global_lock or threading.RLock()
            rv = raw.initialize(False)
        if rv != CKR_OK:
            raise TokenUnavailable(f"C_Initialize of {self.path!r} failed (rv=0x{rv:x})")
        _INIT_PID[self.path] = pid

    def reinitialize(self) -> None:
        """``C_Finalize`` + ``C_Initialize``; caller holds :meth:`exclusive`. Bumps the generation,
        which makes every token connection drop its sessions (never closing stale handles)."""
        raw, _ = _LOADED[self.path]
        rv = raw.finalize()
        if rv not in (CKR_OK, CKR_CRYPTOKI_NOT_INITIALIZED):
            log.debug("C_Finalize of %s returned 0x%x", self.path, rv)
        with self.lock:  # every session and handle is stale from here on, even if init fails
            self.generation += 1
            for conn in self.conns:
                conn.forget_sessions()
        self._c_initialize(raw)

    def want_lock_mode(self, lock_mode: LockMode) -> None:
        if lock_mode is LockMode.GLOBAL and self.global_lock is None:
            self.global_lock = threading.RLock()

    # -- busy accounting -----------------------------------------------------------------------
    def _wait_not_exclusive(self, deadline: float) -> None:
        # caller holds self.lock
        while self.exclusive_held:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TokenUnavailable("the PKCS#11 module is being re-initialised; retry shortly")
            self.waiters += 1
            try:
                self.cond.wait(remaining)
            finally:
                self.waiters -= 1

    @contextmanager
    def calling(self) -> Iterator[None]:
        """Mark one (slow-path) PKCS#11 call sequence as in flight; honours the global lock."""
        with self.lock:
            self._wait_not_exclusive(time.monotonic() + DRAIN_TIMEOUT)
            self.busy += 1
        glock = self.global_lock
        if glock is not None:
            glock.acquire()
        try:
            yield
        finally:
            if glock is not None:
                glock.release()
            with self.lock:
                self.busy -= 1
                if self.waiters:
                    self.cond.notify_all()

    def _in_flight(self) -> bool:
        # caller holds self.lock
        return bool(self.busy) or any(ps.active for conn in self.conns for ps in conn.sessions)

    @contextmanager
    def exclusive(self, timeout: float = DRAIN_TIMEOUT) -> Iterator[None]:
        """Hold the module alone: new calls wait, in-flight calls are drained first."""
        deadline = time.monotonic() + timeout
        with self.lock:
            self._wait_not_exclusive(deadline)
            self.exclusive_held = True
        try:
            pause = 0.0002
            while True:
                with self.lock:
                    if not self._in_flight():
                        break
                if time.monotonic() > deadline:
                    raise TokenUnavailable("PKCS#11 calls did not finish in time for a re-initialisation")
                time.sleep(pause)  # hot-path calls do not notify: poll, briefly
                pause = min(pause * 2, 0.01)
        except BaseException:
            with self.lock:
                self.exclusive_held = False
                self.cond.notify_all()
            raise
        try:
            yield
        finally:
            with self.lock:
                self.exclusive_held = False
                self.cond.notify_all()


# --------------------------------------------------------------------------------------------
# Sessions and the per-token connection
# --------------------------------------------------------------------------------------------

class PooledSession:
    """A PKCS#11 session of the pool with its cache of key objects (``label -> cached key``)."""

    __slots__ = ("session", "keys", "generation", "held_lock", "bad", "active")

    def __init__(self, session: Any, generation: int) -> None:
        self.session = session
        self.keys: dict[str, Any] = {}
        self.generation = generation
        self.held_lock: threading.RLock | None = None
        self.bad = False
        self.active = False  # checked out: a thread may be inside a PKCS#11 call with it


def find_token(lib: _Library, label: str) -> Any | None:
    """The token labelled ``label`` (None if absent). Slots whose token cannot be read are skipped,
    so one broken token does not hide the others."""
    found = []
    for slot in lib.get_slots(token_present=True):
        try:
            token = slot.get_token()
        except px.PKCS11Error:
            continue
        if token.label == label:
            found.append(token)
    if len(found) > 1:
        raise HsmError(f"more than one token is labelled {label!r}")
    return found[0] if found else None


class TokenConn:
    """One logged-in token in one process: the login session, the session pool, the label epochs
    and key metadata shared by every :class:`~hsm.keystore.KeyStore` of the same token."""

    def __init__(self, module: Module, label: str, pin: str, max_sessions: int,
                 backoff: tuple[float, float]) -> None:
        self.module = module
        self.label = label
        self._pin = pin
        self.max_sessions = max_sessions
        self.backoff_min, self.backoff_max = backoff
        self.refs = 0
        self.token: Any = None
        self.login: Any = None
        self.generation = -1
        self.idle: collections.deque[PooledSession] = collections.deque()  # LIFO; pop/append are atomic
        self.sessions: set[PooledSession] = set()  # every open pooled session of this generation
        self.epochs: dict[str, int] = {}
        self.meta: dict[str, Any] = {}  # label -> hsm.keystore._Meta
        self._epoch_counter = 0
        self.state_lock = threading.Lock()
        # Serialises C_FindObjects* with creating/destroying token objects in this process:
        # SoftHSM 2.6 fails object creation (CKR_GENERAL_ERROR) when another thread searches the
        # same token at the same time. Hot paths (cached handles) never take it.
        self.object_lock = threading.RLock()
        self.broken = False
        self.broken_reason = ""
        self.next_attempt = 0.0
        self.backoff = self.backoff_min
        self.ever_opened = False
        self.closed = False

    # -- identity --------------------------------------------------------------------------------
    def pin_matches(self, pin: str) -> bool:
        return hmac.compare_digest(self._pin.encode(), pin.encode())

    def bump_epoch(self, label: str) -> None:
        """Invalidate every cached key object and metadata of ``label`` (create/destroy)."""
        with self.module.lock:
            self._epoch_counter += 1
            self.epochs[label] = self._epoch_counter
            self.meta.pop(label, None)
            for ps in self.sessions:
                ps.keys.pop(label, None)

    # -- connection --------------------------------------------------------------------------------
    def forget_sessions(self) -> None:
        """After a module re-initialisation (caller holds module.lock): every handle is stale."""
        self.idle.clear()
        self.sessions.clear()
        self.login = None
        self.token = None

    def connect(self, rescan: bool = True) -> None:
        """Find the token and log in (one login per process). Caller holds ``state_lock``.

        A module may list only the tokens that existed at ``C_Initialize`` (SoftHSM does), so a
        token created since is looked for once more after re-initialising the module."""
        module = self.module
        rescans = 3 if rescan else 0
        for _ in range(4 + rescans):
            with module.calling():
                generation = module.generation
                try:
                    token = find_token(module.lib, self.label)
                    login = None if token is None else self._login(token)
                except px.PKCS11Error as exc:
                    raise map_error(exc, f"opening token {self.label!r}") from None
            if token is None:
                if rescans:
                    # Not listed: created after C_Initialize, or unreadable at that moment
                    # because another process was writing it. Re-scan, pausing a little.
                    rescans -= 1
                    with module.exclusive():
                        module.reinitialize()
                    time.sleep(0.01 * (3 - rescans))
                    continue
                if self.ever_opened:
                    raise TokenUnavailable(f"token {self.label!r} is not present")
                raise TokenNotInitialized(f"no token labelled {self.label!r} in {module.path}")
            with module.lock:
                if module.generation != generation:
                    continue  # re-initialised meanwhile (another token recovering): log in again
                self.token, self.login, self.generation = token, login, generation
                self.idle.clear()
                self.sessions.clear()
                self.ever_opened = True
                self.broken = False
                self.broken_reason = ""
                self.backoff = self.backoff_min
                return
        raise TokenUnavailable(f"token {self.label!r}: the module kept being re-initialised")

    def _login(self, token: Any) -> Any:
        try:
            return token.open(rw=True, user_pin=self._pin)
        except px.UserAlreadyLoggedIn:
            # Another user of the module in this process logged in already.
            return token.open(rw=True)

    def ensure(self) -> None:
        """Slow path of :meth:`checkout`: connect, reconnect after a re-initialisation, or recover."""
        with self.state_lock:
            if self.closed:
                raise HsmError("the key store was closed")
            if self.broken:
                self._recover()
            elif self.login is None or self.generation != self.module.generation:
                # Logged out by a re-initialisation (another token recovering): log in again. A
                # token that was open and is now missing is an outage: recover with back-off.
                try:
                    self.connect(rescan=not self.ever_opened)
                except TokenUnavailable as exc:
                    self.mark_broken(str(exc))
                    raise

    def _recover(self) -> None:
        now = time.monotonic()
        if now < self.next_attempt:
            raise TokenUnavailable(f"token {self.label!r} is unavailable: {self.broken_reason}")
        log.info("token %r: trying to recover (re-initialising %s)", self.label, self.module.path)
        try:
            with self.module.exclusive():
                self.module.reinitialize()
            self.connect(rescan=False)
        except (TokenUnavailable, TokenNotInitialized) as exc:
            self.next_attempt = time.monotonic() + self.backoff
            self.backoff = min(self.backoff * 2, self.backoff_max)
            self.broken_reason = str(exc)
            raise TokenUnavailable(f"token {self.label!r} is still unavailable") from None
        log.info("token %r is available again", self.label)

    def mark_broken(self, reason: str) -> None:
        with self.module.lock:
            if self.broken:
                return
            self.broken = True
            self.broken_reason = reason
            self.backoff = self.backoff_min
            self.next_attempt = time.monotonic() + self.backoff
        log.warning("token %r became unavailable: %s", self.label, reason)

    # -- pool ---------------------------------------------------------------------------------------
    def checkout(self) -> PooledSession:
        """A session for one operation; return it with :meth:`checkin` (always, in ``finally``).

        Hot path: pop an idle session, mark it active, check that no re-initialisation is under
        way and that it is current -- no lock taken."""
        module = self.module
        try:
            ps = self.idle.pop()
        except IndexError:
            return self._checkout_slow()
        ps.active = True
        if module.exclusive_held or ps.generation != module.generation or self.broken:
            ps.active = False
            if ps.generation == module.generation and not self.broken:
                self.idle.append(ps)
            return self._checkout_slow()
        glock = module.global_lock
        if glock is not None:
            glock.acquire()
            ps.held_lock = glock
        return ps

    def _checkout_slow(self) -> PooledSession:
        module = self.module
        deadline = time.monotonic() + CHECKOUT_TIMEOUT
        while True:
            lock = module.lock
            lock.acquire()
            if (self.broken or module.exclusive_held or self.login is None
                    or self.generation != module.generation):
                lock.release()
                self.ensure_or_wait()
                continue
            try:
                ps: PooledSession | None = self.idle.pop()
            except IndexError:
                ps = None
            if ps is not None:
                ps.active = True
                lock.release()
                break
            if len(self.sessions) < self.max_sessions:
                module.busy += 1  # opening counts as in flight
                generation = self.generation
                lock.release()
                ps = self._open_session(generation)
                break
            # Pool exhausted: wait for a checkin (which notifies waiters).
            module.waiters += 1
            try:
                module.cond.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            finally:
                module.waiters -= 1
                lock.release()
            if time.monotonic() > deadline:
                raise TokenUnavailable(f"no free PKCS#11 session for token {self.label!r}")
        glock = module.global_lock
        if glock is not None:
            glock.acquire()
            ps.held_lock = glock
        return ps

    def ensure_or_wait(self) -> None:
        module = self.module
        if module.exclusive_held:
            with module.lock:
                module._wait_not_exclusive(time.monotonic() + DRAIN_TIMEOUT)
            return
        self.ensure()

    def _open_session(self, generation: int) -> PooledSession:
        """Open a pooled session (caller counted itself in ``module.busy``)."""
        module = self.module
        try:
            session = self.token.open(rw=True)
        except BaseException as exc:
            with module.lock:
                module.busy -= 1
                if module.waiters:
                    module.cond.notify_all()
            if isinstance(exc, px.PKCS11Error):
                if is_unavailable(exc) or isinstance(exc, AMBIGUOUS):
                    self.mark_broken(type(exc).__name__)
                    raise TokenUnavailable(f"token {self.label!r} is unavailable") from None
                raise map_error(exc, "opening a session") from None
            raise
        ps = PooledSession(session, generation)
        with module.lock:
            module.busy -= 1
            ps.active = True
            if module.generation == generation:
                self.sessions.add(ps)
            else:  # re-initialised while opening: the handle is already stale
                ps.bad = True
            if module.waiters:
                module.cond.notify_all()
        return ps

    def checkin(self, ps: PooledSession) -> None:
        glock = ps.held_lock
        if glock is not None:
            ps.held_lock = None
            glock.release()
        module = self.module
        ps.active = False
        if ps.bad or self.broken or self.closed or ps.generation != module.generation:
            self._retire(ps)
        else:
            self.idle.append(ps)
        if module.waiters:
            with module.lock:
                module.cond.notify_all()

    def _retire(self, ps: PooledSession) -> None:
        """Take ``ps`` out of the pool; close it if its handle is still ours (same generation:
        a stale handle number may by now belong to a new session and must never be closed)."""
        module = self.module
        with module.lock:
            current = ps in self.sessions and ps.generation == module.generation
            self.sessions.discard(ps)
            try:
                self.idle.remove(ps)
            except ValueError:
                pass
        if current:
            self._close_quietly(ps.session)

    # -- health -------------------------------------------------------------------------------------
    def token_ok(self) -> bool:
        """One C_GetTokenInfo on our slot (tens of µs): False if the token cannot be read.
        Caller is inside a :meth:`checkout` or :meth:`Module.calling` section."""
        token = self.token
        if token is None:
            return False
        try:
            token.slot.get_token()
        except px.PKCS11Error:
            return False
        return True

    def fail(self, exc: BaseException, ps: PooledSession | None, what: str) -> HsmError:
        """Map ``exc`` raised inside an operation, marking the token broken when it is gone."""
        if isinstance(exc, px.PKCS11Error):
            if is_unavailable(exc) or (isinstance(exc, AMBIGUOUS) and not self.token_ok()):
                if ps is not None:
                    ps.bad = True
                self.mark_broken(f"{what}: {type(exc).__name__}")
                return TokenUnavailable(f"{what}: token {self.label!r} is unavailable")
            return map_error(exc, what)
        if isinstance(exc, HsmError):
            return exc
        return HsmError(f"{what}: unexpected failure ({type(exc).__name__})")

    # -- shutdown -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Close every session and log out (last KeyStore of this token in the process)."""
        module = self.module
        try:
            with module.exclusive():
                with module.lock:
                    self.closed = True
                    sessions = [ps.session for ps in self.sessions]
                    login, self.login = self.login, None
                    same_generation = self.generation == module.generation
                    self.idle.clear()
                    self.sessions.clear()
                    if self in module.conns:
                        module.conns.remove(self)
                if same_generation and not self.broken:
                    for session in sessions:
                        self._close_quietly(session)
                    if login is not None:
                        self._close_quietly(login)
        except TokenUnavailable:
            log.warning("token %r: sessions still busy at close; leaving them to the process exit", self.label)

    @staticmethod
    def _close_quietly(session: Any) -> None:
        try:
            session.close()
        except px.PKCS11Error as exc:
            log.debug("closing a PKCS#11 session failed: %s", type(exc).__name__)


# --------------------------------------------------------------------------------------------
# Per-process registry
# --------------------------------------------------------------------------------------------

class _Registry:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.modules: dict[str, Module] = {}
        self.conns: dict[tuple[str, str], TokenConn] = {}


_registry_lock = threading.Lock()
_registry = _Registry()
_abandoned: list[_Registry] = []  # parents' objects, kept alive so nothing finalises them in a child


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _current_registry() -> _Registry:
    # caller holds _registry_lock
    global _registry
    if _registry.pid != os.getpid():
        _abandoned.append(_registry)
        _registry = _Registry()
    return _registry


def attach(module_path: str, token_label: str, pin: str, *, lock_mode: LockMode,
           env: tuple[tuple[str, str], ...], max_sessions: int, backoff: tuple[float, float],
           ever_opened: bool) -> TokenConn:
    """The process's connection to a token (created and logged in on first use); refcounted."""
    with _registry_lock:
        reg = _current_registry()
        module = reg.modules.get(module_path)
        if module is None:
            module = Module(module_path, lock_mode, env)
            reg.modules[module_path] = module
        else:
            module.want_lock_mode(lock_mode)
        key = (module_path, token_label)
        conn = reg.conns.get(key)
        if conn is not None and not conn.closed:
            if not conn.pin_matches(pin):
                raise WrongPin(f"token {token_label!r} is already logged in in this process with another PIN")
            conn.refs += 1
            return conn
        conn = TokenConn(module, token_label, pin, max_sessions, backoff)
        conn.ever_opened = ever_opened
        try:
            with conn.state_lock:
                conn.connect()
        except TokenUnavailable as exc:
            if not ever_opened:
                raise
            # Opened before (e.g. in the parent before a fork) and gone now: keep the connection,
            # broken, so that calls fail fast and recovery runs with back-off.
            conn.mark_broken(str(exc))
        conn.refs = 1
        reg.conns[key] = conn
        with module.lock:
            module.conns.append(conn)
        return conn


def detach(conn: TokenConn) -> None:
    """Drop one reference; the last one closes the token's sessions and logs out."""
    with _registry_lock:
        if _registry.pid != os.getpid() or conn.module.pid != os.getpid():
            return  # a parent's connection: never touch it in a child
        conn.refs -= 1
        if conn.refs > 0:
            return
        key = (conn.module.path, conn.label)
        if _registry.conns.get(key) is conn:
            del _registry.conns[key]
    conn.close()


def module_lib(module_path: str) -> _Library:
    """The python-pkcs11 library object of an initialised module in this process (tests, bench)."""
    with _registry_lock:
        module = _current_registry().modules.get(module_path)
    if module is None:
        raise HsmError(f"module {module_path!r} is not initialised in this process")
    return module.lib


def with_busy(conn: TokenConn, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` (PKCS#11 calls that use no pooled session) as an in-flight call."""
    with conn.module.calling():
        return fn()


__all__ = ["AMBIGUOUS", "DECRYPT_FAILURE", "STALE_HANDLE", "LockMode", "Module", "PooledSession",
           "TokenConn", "attach", "detach", "find_token", "is_unavailable", "map_error", "module_lib",
           "with_busy"]
