"""The private-equity platform's writes, for one caller: the token, deploys, projects, purchases, views, downloads.

Each method checks everything it can before anything is enqueued (a bad field is a
ValidationError naming it, another key's account a Forbidden, and no task exists
for either), then submits the operation (``services.plans``) and answers with the
task record. What only the chain can decide when the transaction runs (a race with
another purchase, say) ends the task as failed with the decoded revert reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from access import policy
from contracts import artifact_names, load_artifact
from contracts.abi import AbiError, encode_deploy
from errors import Forbidden, NotFound, ValidationError
from services.accounts import Accounts
from services.fields import amount, integer
from services.files import FileStore
from services.platform import hold_deploy_lock, platform_params, store_payload
from services.submit import Submitted, Submitter
from services.views import PlatformViews
from settings import Settings

#: A deployed contract's creation code may be at most 2 x 24 KiB (EIP-3860 initcode limit), in hex.
MAX_INITCODE_BYTES = 49152
MAX_ABI_ITEMS = 500

#: REST/thesis names of the owner's balance operations -> write operations.
TOKEN_CHANGES = {"add": "token_add", "delete": "token_remove", "set": "token_set"}


@dataclass
class Market:
    """The platform as one caller may use it (its accounts through ``accounts``)."""

    accounts: Accounts
    views: PlatformViews
    files: FileStore
    settings: Settings

    @property
    def submitter(self) -> Submitter:
        return self.accounts.submitter

    def _admin(self) -> None:
        policy.require_admin(self.accounts.caller)

    # -- the token ------------------------------------------------------------------------------

    def token_change(self, change: str, account: str, value: int) -> Submitted:
        """The owner's add (mint), delete (burn) or set of ``account``'s balance (admin only)."""
        self._admin()
        token = self.views.require_platform()["PlatformToken"]
        if change == "delete":
            balance, _ = self.views.token_balance(account)
            if value > balance:
                raise ValidationError("value", f"exceeds the balance of {account} ({balance})")
        return self.submitter.submit(TOKEN_CHANGES[change], {"token": token, "address": account, "value": str(value)})

    def token_transfer(self, sender: str, to: str, value: int) -> Submitted:
        """Move ``value`` of ``sender``'s tokens (one of the caller's accounts, unlocked) to ``to``."""
        token = self.views.require_platform()["PlatformToken"]
        self.accounts.check_signer(sender, "from")
        balance, _ = self.views.token_balance(sender)
        if value > balance:
            raise ValidationError("value", f"exceeds the token balance of {sender} ({balance})")
        return self.submitter.submit("token_transfer", {"token": token, "sender": sender, "to": to, "value": str(value)})

    # -- contracts ------------------------------------------------------------------------------

    def deploy(self, data: dict[str, Any], *, name_field: str = "name") -> Submitted:
        """Deploy the platform, one platform contract by name, or any contract from {abi, bytecode, args} (admin)."""
        self._admin()
        name = data.get(name_field)
        gas_price = amount(data["gas_price"], "gas_price", allow_zero=False) if data.get("gas_price") is not None else None
        gas_limit = (integer(data["gas_limit"], "gas_limit", low=21_000, high=self.settings.block_gas_limit)
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
            params: dict[str, Any] = platform_params(self.settings, reason="admin")
            if gas_price is not None:
                params["gas_price"] = str(gas_price)
            submitted = self.submitter.submit("deploy_platform", params)
            hold_deploy_lock(self.views.redis, submitted.record.id)
            return submitted
        if not has_code:
            assert isinstance(name, str)
            if name not in artifact_names():
                known = ", ".join(["platform", *artifact_names()])
                raise ValidationError(name_field, f"no contract named {name!r} (known: {known})", status=404)
            artifact = load_artifact(name)
            args = data["args"] if data.get("args") is not None else self.default_args(name)
            _check_encodes(artifact["abi"], artifact["bytecode"], args)
            return self.submitter.submit("deploy_contract", {"name": name, "args": args, "gas_price": _opt(gas_price),
                                                             "gas_limit": gas_limit})
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
        digest = store_payload(self.views.redis, abi, bytecode, ttl=self.settings.result_expires)
        return self.submitter.submit("deploy_contract", {"payload": digest, "args": args, "gas_price": _opt(gas_price),
                                                         "gas_limit": gas_limit})

    def default_args(self, name: str) -> list[Any]:
        """Constructor arguments of a platform contract deployed by name without ``args``."""
        s = self.settings
        if name == "PlatformToken":
            return [s.token_name, s.token_symbol, s.token_decimals]
        if name == "ProjectMarket":
            return [self.views.require_platform()["PlatformToken"], s.publish_reward, s.fee_bps, self.accounts.treasury]
        return []

    # -- projects ----------------------------------------------------------------------------------

    def check_publisher(self, publisher: str, field: str) -> None:
        """Before any file is stored: the platform exists and the caller may sign as ``publisher`` now."""
        self.views.require_platform()
        self.accounts.check_signer(publisher, field)

    def bind_upload(self, digest: str, publisher: str) -> None:
        """Record that ``publisher`` uploaded the bytes of ``digest``: only such a publisher's projects serve them."""
        self.accounts.owners.bind_file(digest, publisher)

    def check_hash_only_publish(self, digest: str, publisher: str, field: str) -> None:
        """Refuse to publish, without its bytes, a file another publisher uploaded (it would be served to our buyers)."""
        owners = self.accounts.owners
        if owners.file_has_uploader(digest) and not owners.file_uploaded_by(digest, publisher):
            raise Forbidden(f"the file {digest} was uploaded by another publisher: upload its bytes to publish it", field=field)

    def publish(self, publisher: str, name: str, price: int, digest: str, *, extra: dict[str, Any] | None = None) -> Submitted:
        """Publish a project whose file (or hash) is ``digest``; ``publisher`` signs and is rewarded."""
        market = self.views.require_platform()["ProjectMarket"]
        self.accounts.check_signer(publisher, "publisher")
        params = {"market": market, "publisher": publisher, "name": name, "file_hash": digest, "price": str(price)}
        return self.submitter.submit("publish", {**params, **(extra or {})})

    def buy(self, buyer: str, project_id: int, *, buyer_field: str = "buyer", id_field: str = "id") -> Submitted:
        """Buy a project as ``buyer``; refused before enqueueing when it cannot succeed now."""
        market = self.views.require_platform()["ProjectMarket"]
        project = self.views.get_project(project_id, field=id_field)
        self.accounts.check_signer(buyer, buyer_field)
        if buyer == project.publisher:
            raise ValidationError(buyer_field, "is the project's publisher: a publisher cannot buy its own project")
        if self.views.has_bought(project_id, buyer):
            raise ValidationError(buyer_field, f"already bought project {project_id}", status=409)
        balance, _ = self.views.token_balance(buyer)
        if balance < project.price:
            raise ValidationError(buyer_field, f"has {balance} tokens, the project costs {project.price} (insufficient balance)")
        return self.submitter.submit("buy", {"market": market, "buyer": buyer, "project_id": project_id})

    def record_view(self, project_id: int, account: str) -> Submitted:
        """Record on chain that ``account`` (one of the caller's) viewed project ``project_id``."""
        market = self.views.require_platform()["ProjectMarket"]
        self.accounts.check_acts_as(account, "account")
        return self.submitter.submit("record_view", {"market": market, "project_id": project_id, "account": account})

    def check_download(self, project_id: int, account: str) -> Path:
        """The stored file of project ``project_id`` for one of the caller's accounts that is its publisher or a buyer.

        A file is served for a project only when the project's publisher uploaded its
        bytes: a hash published without them never serves somebody else's file.
        """
        self.accounts.check_acts_as(account, "account")
        project = self.views.get_project(project_id)
        if account != project.publisher and not self.views.has_bought(project_id, account):
            raise Forbidden(f"{account} is neither the publisher nor a buyer of project {project_id}", field="account")
        path = self.files.path(project.file_hash)
        if not path.is_file() or not self.accounts.owners.file_uploaded_by(project.file_hash, project.publisher):
            raise NotFound(f"project {project_id}'s file ({project.file_hash}) was not uploaded to this platform by its publisher",
                           field="file")
        return path

    def record_download(self, project_id: int, account: str) -> Submitted:
        """Record on chain that ``account`` downloaded project ``project_id``'s file."""
        market = self.views.require_platform()["ProjectMarket"]
        return self.submitter.submit("record_download", {"market": market, "project_id": project_id, "account": account})


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
