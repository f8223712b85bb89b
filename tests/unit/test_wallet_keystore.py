"""The keystore on a real filesystem: geth's format, permissions, errors that keep secrets out."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import stat
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from eth_keyfile import decode_keyfile_json

from errors import EspError, NotFound, ValidationError
from wallet import keystore as ks
from wallet.errors import AccountExists, KeystoreCorrupt, UnknownAccount, WrongPassword
from wallet.kdf import DEFAULT_SCRYPT_N
from wallet.keystore import Keystore

FAST_N = 2**12  # the format is the same; the default N=2^18 is exercised once below
PASSWORD = "correct horse battery staple ünïcode"
GETH_NAME = re.compile(r"^UTC--\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}\.\d{6}Z--[0-9a-f]{40}$")

# The PBKDF2 test vector of the Web3 Secret Storage definition (password "testpassword").
SPEC_VECTOR = {
    "crypto": {
        "cipher": "aes-128-ctr",
        "cipherparams": {"iv": "6087dab2f9fdbbfaddc31a909735c1e6"},
        "ciphertext": "5318b4d5bcd28de64ee5559e671353e16f075ecae9f99c7a79a38af5f869aa46",
        "kdf": "pbkdf2",
        "kdfparams": {
            "c": 262144,
            "dklen": 32,
            "prf": "hmac-sha256",
            "salt": "ae3cd4e7013836a3df6bd7241b12db061dbe2c6785853cce422d148a624ce0bd",
        },
        "mac": "517ead924a9d0dc3124507e3393d175ce3ff7c1e96529c6c555ce9e51205e9b2",
    },
    "id": "3198bc9c-6672-5ab3-d995-4942343ae5b6",
    "version": 3,
}
SPEC_KEY = bytes.fromhex("7a28b5ba57c53603b0b07b56bba752f7784bf506fa95edc395f5cf6c7514fe9d")


@pytest.fixture
def store(tmp_path: Path) -> Keystore:
    return Keystore(tmp_path / "keystore", work_factor=FAST_N)


@pytest.fixture
def umask_wide() -> Iterator[None]:
    """A permissive umask (0): the keystore must not depend on the process umask."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _text_of(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc) + repr(exc.args) + repr(vars(exc))


def test_create_then_decrypt_round_trip(store: Keystore) -> None:
    address = store.create(PASSWORD)
    key = store.decrypt(address, PASSWORD)
    assert len(key) == 32
    assert Account.from_key(key).address == address
    assert store.list() == [address]
    assert store.has(address) and store.has(address.lower())


def test_files_are_geth_v3_keystores(store: Keystore) -> None:
    address = store.create(PASSWORD)
    (path,) = [p for p in store.directory.iterdir() if not p.name.startswith(".")]
    assert GETH_NAME.match(path.name), path.name
    assert path.name.endswith("--" + address[2:].lower())
    doc = json.loads(path.read_text())
    assert doc["version"] == 3
    assert doc["address"] == address[2:].lower()  # geth writes it lower-case, without 0x
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", doc["id"])
    crypto = doc["crypto"]
    assert crypto["cipher"] == "aes-128-ctr"
    assert len(bytes.fromhex(crypto["cipherparams"]["iv"])) == 16
    assert len(bytes.fromhex(crypto["ciphertext"])) == 32
    assert len(bytes.fromhex(crypto["mac"])) == 32
    assert crypto["kdf"] == "scrypt"
    assert crypto["kdfparams"]["dklen"] == 32 and crypto["kdfparams"]["n"] == FAST_N
    assert crypto["kdfparams"]["r"] == 8 and crypto["kdfparams"]["p"] == 1
    assert len(bytes.fromhex(crypto["kdfparams"]["salt"])) >= 16
    # An independent decoder of the format opens it too.
    assert decode_keyfile_json(doc, PASSWORD.encode()) == store.decrypt(address, PASSWORD)


def test_default_parameters_are_scrypt_2_17(tmp_path: Path) -> None:
    store = Keystore(tmp_path / "ks")
    started = time.perf_counter()
    address = store.create(PASSWORD)
    created_in = time.perf_counter() - started
    doc = json.loads(store.path_of(address).read_text())
    assert doc["crypto"]["kdf"] == "scrypt" and doc["crypto"]["kdfparams"]["n"] == DEFAULT_SCRYPT_N == 2**18  # geth's standard
    assert store.decrypt(address, PASSWORD)
    assert created_in < 30  # sanity only; the measured figure is in the module docstring


def test_reads_the_spec_pbkdf2_vector_as_a_geth_file(store: Keystore) -> None:
    address = Account.from_key(SPEC_KEY).address
    store.directory.mkdir(mode=0o700)
    (store.directory / f"UTC--2016-03-22T12-57-55.920751759Z--{address[2:].lower()}").write_text(json.dumps(SPEC_VECTOR))
    assert store.list() == [address]
    assert store.decrypt(address, "testpassword") == SPEC_KEY


def test_pbkdf2_keystores_work_too(tmp_path: Path) -> None:
    store = Keystore(tmp_path / "ks", kdf="pbkdf2", work_factor=1000)
    address = store.create(PASSWORD)
    assert json.loads(store.path_of(address).read_text())["crypto"]["kdf"] == "pbkdf2"
    assert Account.from_key(store.decrypt(address, PASSWORD)).address == address


@pytest.mark.usefixtures("umask_wide")
def test_permissions_are_0700_and_0600_whatever_the_umask(store: Keystore) -> None:
    address = store.create(PASSWORD)
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.path_of(address).stat().st_mode) == 0o600
    imported = store.import_key(Account.create().key, PASSWORD)
    assert stat.S_IMODE(store.path_of(imported).stat().st_mode) == 0o600
    # Nothing half-written is left behind.
    assert not [p for p in store.directory.iterdir() if p.name.startswith(".tmp-")]


def test_an_existing_loose_directory_is_tightened(tmp_path: Path) -> None:
    directory = tmp_path / "loose"
    directory.mkdir()
    os.chmod(directory, 0o755)  # noqa: S103 - a loose folder is what this test starts from
    Keystore(directory, work_factor=FAST_N).create(PASSWORD)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_wrong_password_names_the_account_not_the_secret(store: Keystore) -> None:
    address = store.create(PASSWORD)
    key_hex = store.decrypt(address, PASSWORD).hex()
    wrong = "not-the-password-42"
    with pytest.raises(WrongPassword) as info:
        store.decrypt(address, wrong)
    assert isinstance(info.value, EspError)
    assert info.value.status == 403 and address in str(info.value)
    text = _text_of(info.value)
    for secret in (PASSWORD, wrong, key_hex):
        assert secret not in text
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_unknown_account_is_a_not_found(store: Keystore) -> None:
    address = Account.create().address
    with pytest.raises(UnknownAccount) as info:
        store.decrypt(address, PASSWORD)
    assert isinstance(info.value, NotFound) and info.value.status == 404
    assert not store.has(address)
    assert store.list() == []


def test_import_key_then_refuse_a_second_copy(store: Keystore) -> None:
    key = Account.create().key
    address = store.import_key(key.hex(), PASSWORD)
    assert store.decrypt(address, PASSWORD) == bytes(key)
    with pytest.raises(AccountExists):
        store.import_key(bytes(key), "another password")
    assert len(store.list()) == 1


@pytest.mark.parametrize("bad", ["", "0x1234", "zz" * 32, b"\x01" * 31, 12345])
def test_import_key_rejects_malformed_keys_without_echoing_them(store: Keystore, bad: object) -> None:
    with pytest.raises(ValidationError) as info:
        store.import_key(bad, PASSWORD)  # type: ignore[arg-type]
    assert info.value.field == "private_key"
    if isinstance(bad, str) and bad:
        assert bad not in str(info.value)


def test_import_refuses_a_key_outside_the_curve(store: Keystore) -> None:
    with pytest.raises(ValidationError) as info:
        store.import_key(b"\xff" * 32, PASSWORD)
    assert info.value.field == "private_key"


@pytest.mark.parametrize("password", ["", 5, None, "x" * (ks.MAX_PASSWORD_CHARS + 1)])
def test_bad_passwords_are_validation_errors(store: Keystore, password: object) -> None:
    with pytest.raises(ValidationError) as info:
        store.create(password)  # type: ignore[arg-type]
    assert info.value.field == "password"


def test_a_file_asking_for_huge_scrypt_work_is_refused_before_any_kdf(store: Keystore) -> None:
    address = store.create(PASSWORD)
    path = store.path_of(address)
    doc = json.loads(path.read_text())
    doc["crypto"]["kdfparams"]["n"] = 2**30  # 128 GiB of scrypt memory if we obeyed
    path.write_text(json.dumps(doc))
    started = time.perf_counter()
    with pytest.raises(KeystoreCorrupt):
        store.decrypt(address, PASSWORD)
    assert time.perf_counter() - started < 1


def test_a_file_holding_another_accounts_key_is_refused(store: Keystore) -> None:
    first = store.create(PASSWORD)
    second = store.create(PASSWORD)
    first_doc = json.loads(store.path_of(first).read_text())
    first_doc.pop("address")
    store.path_of(second).write_text(json.dumps(first_doc))  # second's name, first's key
    with pytest.raises(KeystoreCorrupt):
        store.decrypt(second, PASSWORD)


def test_garbage_file_is_corrupt_not_a_crash(store: Keystore) -> None:
    address = store.create(PASSWORD)
    store.path_of(address).write_text("{not json")
    with pytest.raises(KeystoreCorrupt):
        store.decrypt(address, PASSWORD)


def test_list_is_in_creation_order_and_ignores_other_files(store: Keystore) -> None:
    addresses = [store.create(PASSWORD) for _ in range(3)]
    (store.directory / "README").write_text("not a key")
    assert store.list() == addresses


def test_a_missing_directory_lists_nothing(tmp_path: Path) -> None:
    assert Keystore(tmp_path / "absent").list() == []


@pytest.mark.parametrize("bad", ["0x123", "hello", None, "0x" + "g" * 40])
def test_malformed_addresses_are_validation_errors(store: Keystore, bad: object) -> None:
    with pytest.raises(ValidationError) as info:
        store.has(bad)  # type: ignore[arg-type]
    assert info.value.field == "address"


def test_keyfile_name_matches_geths_layout() -> None:
    when = dt.datetime(2016, 3, 22, 12, 57, 55, 920751, tzinfo=dt.UTC)
    name = ks.keyfile_name("0x7EF5A6135F1FD6A02593EEDC869C6D41D934AEF8", when)
    assert name == "UTC--2016-03-22T12-57-55.920751Z--7ef5a6135f1fd6a02593eedc869c6d41d934aef8"
