"""ESP's own keystore: one Web3 Secret Storage v3 file per account, the format geth writes.

Files are named like geth's (``UTC--2026-11-24T10-26-37.123456Z--<address lower-case, no 0x>``)
so the folder can be copied into a geth ``keystore/`` folder, or a geth key
copied in here. The folder is mode 0700 and every file 0600, set explicitly so
the process umask cannot loosen them; a file is written to a temporary name,
fsynced and renamed, so a crash never leaves half a key behind.

KDF cost, the trade-off (measured on this 2-core machine, pycryptodome scrypt):

    scrypt N=2^12 r=8 p=1    4 MiB     ~13 ms   (geth "light" uses N=2^12, p=6)
    scrypt N=2^14            16 MiB    ~28 ms
    scrypt N=2^16            64 MiB    ~110 ms
    scrypt N=2^17            128 MiB   ~230 ms  (OWASP's minimum for scrypt)
    scrypt N=2^18            256 MiB   ~465 ms  <- DEFAULT_SCRYPT_N (geth "standard", eth-keyfile's default)
    pbkdf2-sha256 c=600,000            ~110 ms  (OWASP's 2023 figure for PBKDF2-SHA256)

The cost is paid once per ``create``/``import_key`` and once per ``decrypt``
(an unlock), never per signature: the unlock store keeps a cheaply
re-encrypted copy for signing. The default, N=2^18, is what geth writes and what
the thesis's nodes paid: an offline attacker who steals the folder gets ~2
guesses/s per core, and a file moves to and from geth unchanged. The price: every
create and unlock costs ~0.47 s of a core and holds 256 MiB while it runs, so a
service creating or unlocking more than a few accounts per second per core should
choose 2^17 (half the cost, OWASP's minimum) or less via ESP_KEYSTORE_SCRYPT_N,
and unlock requests must be rate-limited (they are a CPU and memory DoS lever as
much as a password oracle). Tests pass a smaller N.
In the API the KDF runs on a ``wallet.kdf.KdfGate``'s bounded pool (passed in), so
a burst of creations or unlocks can hold a few request threads, never all of them.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

from eth_account import Account
from eth_keyfile.keyfile import EthKeyfileValueError

from errors import ValidationError
from wallet.address import checksum
from wallet.errors import AccountExists, KeystoreCorrupt, KeystoreUnwritable, UnknownAccount, WrongPassword
from wallet.kdf import DEFAULT_SCRYPT_N, KdfGate

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_KDF: Literal["scrypt", "pbkdf2"] = "scrypt"
DEFAULT_PBKDF2_ITERATIONS = 600_000
#: Upper bounds on the work a keystore file may ask of us: a planted file with
#: scrypt N=2^30 would otherwise make one decrypt allocate 128 GiB.
MAX_SCRYPT_MEMORY = 2**18 * 8 * 128  # geth's standard parameters: 256 MiB
MAX_SCRYPT_P = 16
MAX_PBKDF2_ITERATIONS = 10_000_000
MAX_PASSWORD_CHARS = 1024

DIR_MODE = 0o700
FILE_MODE = 0o600
_NAME = re.compile(r"^UTC--\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}(?:\.\d+)?Z--([0-9a-fA-F]{40})$")
_LOCK_NAME = ".esp-keystore.lock"


def check_password(password: object) -> str:
    """Return ``password`` if it is a usable string; raise ValidationError (never echoing it) otherwise."""
    if not isinstance(password, str):
        raise ValidationError("password", "must be a string")
    if not password:
        raise ValidationError("password", "must not be empty")
    if len(password) > MAX_PASSWORD_CHARS:
        raise ValidationError("password", f"must be at most {MAX_PASSWORD_CHARS} characters")
    return password


def keyfile_name(address: str, when: dt.datetime) -> str:
    """geth's file name for a key created at ``when`` (UTC)."""
    stamp = when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H-%M-%S.%f")
    return f"UTC--{stamp}Z--{checksum(address)[2:].lower()}"


class Keystore:
    """A folder of encrypted keys, one Web3 Secret Storage v3 JSON file per account."""

    def __init__(self, directory: Path, *, kdf: Literal["scrypt", "pbkdf2"] = DEFAULT_KDF, work_factor: int | None = None,
                 gate: KdfGate | None = None) -> None:
        if kdf not in ("scrypt", "pbkdf2"):
            raise ValidationError("kdf", "must be 'scrypt' or 'pbkdf2'")
        if work_factor is None:
            work_factor = DEFAULT_SCRYPT_N if kdf == "scrypt" else DEFAULT_PBKDF2_ITERATIONS
        if kdf == "scrypt" and (work_factor < 2 or work_factor & (work_factor - 1)):
            raise ValidationError("work_factor", "scrypt N must be a power of two")
        if work_factor < 1:
            raise ValidationError("work_factor", "must be positive")
        self.directory = Path(directory)
        self.kdf: Literal["scrypt", "pbkdf2"] = kdf
        self.work_factor = work_factor
        #: Bounds the KDF runs of this process (the API's); None runs them unbounded (workers, scripts).
        self.gate = gate

    def __repr__(self) -> str:
        return f"Keystore({str(self.directory)!r}, kdf={self.kdf!r}, work_factor={self.work_factor})"

    # -- writing ------------------------------------------------------------

    def create(self, password: str) -> str:
        """Create a new key, store it encrypted under ``password``; return its checksummed address."""
        check_password(password)
        account = Account.create()
        self._write(bytes(account.key), password, account.address)
        log.info("created account %s", account.address)
        return str(account.address)

    def import_key(self, private_key: bytes | str, password: str) -> str:
        """Store an existing key (the treasury, a migrated account) encrypted; return its address.

        Raises AccountExists when a file for that address is already here: two
        files for one address with different passwords would make ``decrypt``
        ambiguous.
        """
        check_password(password)
        key = _key_bytes(private_key)
        try:
            address = str(Account.from_key(key).address)
        except (ValueError, TypeError):
            raise ValidationError("private_key", "is not a valid secp256k1 private key") from None
        with self._exclusive():
            if self._paths(address):
                raise AccountExists(address)
            self._write(key, password, address)
        log.info("imported account %s", address)
        return address

    def _write(self, key: bytes, password: str, address: str) -> Path:
        document = self._kdf(Account.encrypt, key, password, kdf=self.kdf, iterations=self.work_factor)
        # geth writes the address lower-case; eth-keyfile writes it checksummed.
        document["address"] = address[2:].lower()
        data = json.dumps(document, separators=(",", ":")).encode()
        path = self.directory / keyfile_name(address, dt.datetime.now(dt.UTC))
        try:
            self._ensure_directory()
            _write_atomically(path, data)
        except OSError as exc:
            # _write_atomically removed its temporary file: nothing of this key is on disk.
            log.error("keystore %s: cannot write a new key file: %s", self.directory, exc.strerror or exc)
            raise KeystoreUnwritable(exc.strerror or type(exc).__name__, full=exc.errno in (errno.ENOSPC, errno.EDQUOT)) from None
        return path

    def _ensure_directory(self) -> None:
        self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        # mkdir's mode is filtered by the umask and ignored for an existing folder.
        if (self.directory.stat().st_mode & 0o777) != DIR_MODE:
            os.chmod(self.directory, DIR_MODE)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold an flock on the folder: import's check-then-write is atomic across processes."""
        self._ensure_directory()
        fd = os.open(self.directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    # -- reading ------------------------------------------------------------

    def list(self) -> list[str]:
        """Checksummed addresses of every key file here, oldest file first."""
        seen: dict[str, None] = {}
        for _, address in self._entries():
            seen.setdefault(address, None)
        return list(seen)

    def has(self, address: str) -> bool:
        """True when a key file for ``address`` is here."""
        return bool(self._paths(checksum(address)))

    def path_of(self, address: str) -> Path:
        """The key file of ``address``; UnknownAccount when there is none."""
        address = checksum(address)
        paths = self._paths(address)
        if not paths:
            raise UnknownAccount(address)
        if len(paths) > 1:
            # geth refuses to pick in this case too ("multiple keys match address").
            raise KeystoreCorrupt(address, f"{len(paths)} key files for one address; keep one")
        return paths[0]

    def decrypt(self, address: str, password: str) -> bytes:
        """The private key of ``address``; WrongPassword, UnknownAccount or KeystoreCorrupt otherwise."""
        address = checksum(address)
        if not isinstance(password, str):
            raise ValidationError("password", "must be a string")
        path = self.path_of(address)
        try:
            document = json.loads(path.read_bytes())
        except (OSError, ValueError):
            raise KeystoreCorrupt(address, "not readable JSON") from None
        _check_document(address, document)
        try:
            key = bytes(self._kdf(Account.decrypt, document, password))
        except EthKeyfileValueError as exc:
            if str(exc) == "MAC mismatch":
                raise WrongPassword(address) from None
            raise KeystoreCorrupt(address, "not a valid v3 keystore") from None
        except (ValueError, KeyError, TypeError):
            # Never chain the original: some decoders put field values in messages.
            raise KeystoreCorrupt(address, "not a valid v3 keystore") from None
        if Account.from_key(key).address != address:
            raise KeystoreCorrupt(address, "the key inside belongs to another address")
        return key

    def _kdf(self, work: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """One KDF run: through the gate (KdfBusy when the process has no room), or right here without one."""
        return self.gate.run(work, *args, **kwargs) if self.gate is not None else work(*args, **kwargs)

    def _entries(self) -> builtins.list[tuple[str, str]]:
        try:
            names = sorted(entry.name for entry in os.scandir(self.directory) if entry.is_file())
        except FileNotFoundError:
            return []
        # Sorting by name sorts by creation time: the stamp follows the fixed "UTC--" prefix.
        found = []
        for name in names:
            match = _NAME.match(name)
            if match:
                found.append((name, checksum("0x" + match.group(1))))
        return found

    def _paths(self, address: str) -> builtins.list[Path]:
        return [self.directory / name for name, found in self._entries() if found == address]


def _check_document(address: str, document: Any) -> None:
    """Refuse files that are not v3 or that ask for more KDF work than we allow."""
    if not isinstance(document, dict) or document.get("version") != 3:
        raise KeystoreCorrupt(address, "not a version 3 keystore")
    crypto = document.get("crypto", document.get("Crypto"))
    if not isinstance(crypto, dict) or not isinstance(crypto.get("kdfparams"), dict):
        raise KeystoreCorrupt(address, "no crypto.kdfparams")
    claimed = document.get("address")
    if isinstance(claimed, str) and claimed.lower().removeprefix("0x") != address[2:].lower():
        raise KeystoreCorrupt(address, "the file names another address")
    params = crypto["kdfparams"]
    try:
        if crypto.get("kdf") == "scrypt":
            n, r, p = int(params["n"]), int(params["r"]), int(params["p"])
            if n * r * 128 > MAX_SCRYPT_MEMORY or p > MAX_SCRYPT_P or min(n, r, p) < 1:
                raise KeystoreCorrupt(address, "scrypt parameters beyond the allowed work")
        elif crypto.get("kdf") == "pbkdf2":
            if not 1 <= int(params["c"]) <= MAX_PBKDF2_ITERATIONS:
                raise KeystoreCorrupt(address, "pbkdf2 iterations beyond the allowed work")
        else:
            raise KeystoreCorrupt(address, "unsupported kdf")
    except (KeyError, TypeError, ValueError):
        raise KeystoreCorrupt(address, "malformed kdfparams") from None


def _key_bytes(private_key: bytes | str) -> bytes:
    if isinstance(private_key, (bytes, bytearray)):
        key = bytes(private_key)
    elif isinstance(private_key, str):
        digits = private_key[2:] if private_key[:2] in ("0x", "0X") else private_key
        try:
            key = bytes.fromhex(digits)
        except ValueError:
            raise ValidationError("private_key", "must be 32 bytes or 64 hex digits") from None
    else:
        raise ValidationError("private_key", "must be 32 bytes or 64 hex digits")
    if len(key) != 32:
        raise ValidationError("private_key", "must be 32 bytes or 64 hex digits")
    return key


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600: temp file in the same folder, fsync, rename, fsync folder."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)  # explicit: never depend on the umask
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
