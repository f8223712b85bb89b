"""The platform's write services, shared by the REST API (/api/v1) and the thesis's routes.

Each ``submit_*`` validates everything it can before anything is enqueued (a bad
field is a 4xx problem naming it, and no task exists for it), then hands the
operation to ``app.submit.submit`` (202 with the task). What only the chain can
decide at the moment the transaction runs (a race with another purchase, say)
ends the task as failed with the decoded revert reason.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO, Any

from flask import Response

from access.owners import Owners
from app.accounts import check_signer
from app.auth import check_acts_as, check_admin, require_caller
from app.context import owners, pool, settings, treasury_address
from app.platform import get_project, has_bought, require_platform, token_balance
from app.submit import submit
from app.validation import address, amount, integer, required, text, tx_hash
from contracts import artifact_names, load_artifact
from contracts.abi import AbiError, encode_deploy
from errors import Forbidden, NotFound, ValidationError
from tasks.business import hold_deploy_lock, platform_params, store_payload

#: The longest project name the market accepts, in UTF-8 bytes (ProjectMarket.MAX_NAME_BYTES).
MAX_NAME_BYTES = 256
#: A deployed contract's creation code may be at most 2 x 24 KiB (EIP-3860 initcode limit), in hex.
MAX_INITCODE_BYTES = 49152
MAX_ABI_ITEMS = 500
FILE_CHUNK = 1 << 20

#: REST/thesis names of the owner's balance operations -> write operations.
TOKEN_CHANGES = {"add": "token_add", "delete": "token_remove", "set": "token_set"}


def task_id_of(response: tuple[Response, int]) -> str:
    """The task id in a submit() response."""
    return str(response[0].get_json()["id"])


# -- the token -------------------------------------------------------------------------------


def submit_token_change(change: str, account: str, value: int) -> tuple[Response, int]:
    """The owner's add (mint), delete (burn) or set of ``account``'s balance (admin only)."""
    token = require_platform()["PlatformToken"]
    if change == "delete":
        balance, _ = token_balance(account)
        if value > balance:
            raise ValidationError("value", f"exceeds the balance of {account} ({balance})")
    return submit(TOKEN_CHANGES[change], {"token": token, "address": account, "value": str(value)})


def submit_token_transfer(sender: str, to: str, value: int) -> tuple[Response, int]:
    """Move ``value`` of ``sender``'s tokens to ``to``; ``sender`` must be unlocked."""
    token = require_platform()["PlatformToken"]
    check_signer(sender, "from")
    balance, _ = token_balance(sender)
    if value > balance:
        raise ValidationError("value", f"exceeds the token balance of {sender} ({balance})")
    return submit("token_transfer", {"token": token, "sender": sender, "to": to, "value": str(value)})


# -- contracts ---------------------------------------------------------------------------------


def submit_deploy(data: dict[str, Any], *, name_field: str = "name") -> tuple[Response, int]:
    """Deploy the platform, one platform contract by name, or any contract from {abi, bytecode, args} (admin)."""
    check_admin()
    name = data.get(name_field)
    gas_price = amount(data["gas_price"], "gas_price", allow_zero=False) if data.get("gas_price") is not None else None
    gas_limit = (integer(data["gas_limit"], "gas_limit", low=21_000, high=settings().block_gas_limit)
                 if data.get("gas_limit") is not None else None)
    has_code = data.get("bytecode") is not None or data.get("abi") is not None
    if name is not None and not isinstance(name, str):
        raise ValidationError(name_field, "must be a string")
    if has_code and name is not None:
        raise ValidationError(name_field, "give either a contract name or {abi, bytecode}, not both")
    if not has_code and name in (None, "", "platform"):
        if data.get("args") is not None:
            raise ValidationError("args", "the platform is deployed with the configured arguments")
        if gas_limit is not None:
            raise ValidationError("gas_limit", "the platform's three transactions have gas limits of their own")
        params: dict[str, Any] = platform_params(settings(), reason="admin")
        if gas_price is not None:
            params["gas_price"] = str(gas_price)
        response = submit("deploy_platform", params)
        hold_deploy_lock(pool().redis, task_id_of(response))
        return response
    if not has_code:
        assert isinstance(name, str)
        if name not in artifact_names():
            known = ", ".join(["platform", *artifact_names()])
            raise ValidationError(name_field, f"no contract named {name!r} (known: {known})", status=404)
        artifact = load_artifact(name)
        args = data["args"] if data.get("args") is not None else default_args(name)
        _check_encodes(artifact["abi"], artifact["bytecode"], args)
        return submit("deploy_contract", {"name": name, "args": args, "gas_price": _opt(gas_price), "gas_limit": gas_limit})
    abi = data.get("abi")
    bytecode = data.get("bytecode")
    if not isinstance(abi, list) or len(abi) > MAX_ABI_ITEMS or not all(isinstance(i, dict) for i in abi):
        raise ValidationError("abi", f"must be a JSON ABI: a list of at most {MAX_ABI_ITEMS} objects")
    if not isinstance(bytecode, str) or not bytecode:
        raise ValidationError("bytecode", "is required: the contract's creation code as 0x hex")
    if len(bytecode) > 2 + 2 * MAX_INITCODE_BYTES:
        raise ValidationError("bytecode", f"is longer than the {MAX_INITCODE_BYTES}-byte initcode limit")
    args = data.get("args") if data.get("args") is not None else []
    _check_encodes(abi, bytecode, args)
    digest = store_payload(pool().redis, abi, bytecode, ttl=settings().result_expires)
    return submit("deploy_contract", {"payload": digest, "args": args, "gas_price": _opt(gas_price), "gas_limit": gas_limit})


def default_args(name: str) -> list[Any]:
    """Constructor arguments of a platform contract deployed by name without ``args``."""
    s = settings()
    if name == "PlatformToken":
        return [s.token_name, s.token_symbol, s.token_decimals]
    if name == "ProjectMarket":
        return [require_platform()["PlatformToken"], s.publish_reward, s.fee_bps, treasury_address()]
    return []


def _check_encodes(abi: list[Any], bytecode: str, args: Any) -> None:
    try:
        encode_deploy(abi, bytecode, args)
    except AbiError as exc:
        field = "bytecode" if exc.argument == "bytecode" else "args"
        raise ValidationError(field, str(exc)) from None
    except (KeyError, TypeError) as exc:
        raise ValidationError("abi", f"is not a valid ABI: {exc}") from None


def _opt(value: int | None) -> str | None:
    return str(value) if value is not None else None


# -- projects -------------------------------------------------------------------------------------


def project_name(value: Any, field: str = "name") -> str:
    """A project name the market accepts: 1..256 UTF-8 bytes."""
    name = text(value, field, max_length=MAX_NAME_BYTES)
    if len(name.encode()) > MAX_NAME_BYTES:
        raise ValidationError(field, f"must be at most {MAX_NAME_BYTES} bytes in UTF-8")
    return name


def file_hash(value: Any, field: str) -> str:
    """A 32-byte hash as 0x hex (the file's SHA-256), not all zeros."""
    digest = tx_hash(value, field)
    if int(digest, 16) == 0:
        raise ValidationError(field, "must not be zero")
    return digest


def files_dir() -> Path:
    """ESP_FILES_DIR, created on first use."""
    folder = settings().files_dir
    folder.mkdir(parents=True, exist_ok=True, mode=0o750)
    return folder


def file_path(digest: str) -> Path:
    """Where the file whose SHA-256 is ``digest`` (0x hex) is stored."""
    return files_dir() / digest[2:].lower()


def max_file_bytes() -> int:
    """The largest project file accepted (ESP_MAX_FILE_MB), in bytes."""
    return settings().max_file_mb * 1024 * 1024


def store_file(stream: IO[bytes], *, field: str = "file") -> tuple[str, int]:
    """Store an uploaded file content-addressed (name = its SHA-256); return (0x digest, size).

    Refuses (413 naming ``field``) a file over ESP_MAX_FILE_MB, and an empty one (422).
    """
    limit = max_file_bytes()
    folder = files_dir()
    digest = hashlib.sha256()
    size = 0
    fd, temp = tempfile.mkstemp(dir=folder, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := stream.read(FILE_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise ValidationError(field, f"is larger than {settings().max_file_mb} MiB (ESP_MAX_FILE_MB)", status=413)
                digest.update(chunk)
                out.write(chunk)
        if size == 0:
            raise ValidationError(field, "must not be empty")
        os.chmod(temp, 0o640)
        target = folder / digest.hexdigest()
        os.replace(temp, target)  # same content, same name: a second upload just rewrites it
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return "0x" + digest.hexdigest(), size


def bind_upload(digest: str, publisher: str) -> None:
    """Record that ``publisher`` uploaded the bytes of ``digest``: only such a publisher's projects serve them."""
    owners().bind_file(digest, publisher)


def check_hash_only_publish(digest: str, publisher: str, field: str) -> None:
    """Refuse to publish, without its bytes, a file another publisher uploaded (its file would be served to our buyers)."""
    store: Owners = owners()
    if store.file_has_uploader(digest) and not store.file_uploaded_by(digest, publisher):
        raise Forbidden(f"the file {digest} was uploaded by another publisher: upload its bytes to publish it", field=field)


def submit_publish(publisher: str, name: str, price: int, digest: str, *, extra: dict[str, Any] | None = None) -> tuple[Response, int]:
    """Publish a project whose file (or hash) is ``digest``; ``publisher`` signs and is rewarded."""
    market = require_platform()["ProjectMarket"]
    check_signer(publisher, "publisher")
    params = {"market": market, "publisher": publisher, "name": name, "file_hash": digest, "price": str(price)}
    return submit("publish", {**params, **(extra or {})})


def check_publish_fields(data: dict[str, Any], *, names: tuple[str, str, str] = ("publisher", "name", "price")) -> tuple[str, str, int]:
    """Validate a publish request's publisher, name and price, and that the publisher can sign, before any file is stored."""
    publisher_field, name_field, price_field = names
    publisher = address(required(data, publisher_field), publisher_field)
    name = project_name(required(data, name_field), name_field)
    price = amount(required(data, price_field), price_field)
    require_platform()
    check_signer(publisher, publisher_field)
    return publisher, name, price


def submit_buy(buyer: str, project_id: int, *, buyer_field: str = "buyer", id_field: str = "id") -> tuple[Response, int]:
    """Buy a project as ``buyer``; refused before enqueueing when it cannot succeed now."""
    market = require_platform()["ProjectMarket"]
    project = get_project(project_id, field=id_field)
    check_signer(buyer, buyer_field)
    if buyer == project.publisher:
        raise ValidationError(buyer_field, "is the project's publisher: a publisher cannot buy its own project")
    if has_bought(project_id, buyer):
        raise ValidationError(buyer_field, f"already bought project {project_id}", status=409)
    balance, _ = token_balance(buyer)
    if balance < project.price:
        raise ValidationError(buyer_field, f"has {balance} tokens, the project costs {project.price} (insufficient balance)")
    return submit("buy", {"market": market, "buyer": buyer, "project_id": project_id})


def submit_record_view(project_id: int, account: str) -> str:
    """Record on chain that ``account`` (one of the caller's) viewed project ``project_id``; return the task id."""
    market = require_platform()["ProjectMarket"]
    check_acts_as(account, "account")
    return task_id_of(submit("record_view", {"market": market, "project_id": project_id, "account": account}))


def check_download(project_id: int, account: str) -> Path:
    """The stored file of project ``project_id`` for one of the caller's accounts that is its publisher or a buyer.

    A file is served for a project only when the project's publisher uploaded its
    bytes: a hash published without them never serves somebody else's file.
    """
    require_caller()
    check_acts_as(account, "account")
    project = get_project(project_id)
    if account != project.publisher and not has_bought(project_id, account):
        raise Forbidden(f"{account} is neither the publisher nor a buyer of project {project_id}", field="account")
    path = file_path(project.file_hash)
    if not path.is_file() or not owners().file_uploaded_by(project.file_hash, project.publisher):
        raise NotFound(f"project {project_id}'s file ({project.file_hash}) was not uploaded to this platform by its publisher",
                       field="file")
    return path


def submit_record_download(project_id: int, account: str) -> str:
    """Record on chain that ``account`` downloaded project ``project_id``'s file; return the task id."""
    market = require_platform()["ProjectMarket"]
    return task_id_of(submit("record_download", {"market": market, "project_id": project_id, "account": account}))
