"""Accounts kept by ESP, for one caller: create (owned by the caller's key), list, unlock, send ETH.

The rules of ``access.policy`` hold for every method: a user's key acts only as the
accounts it created, an admin's as any, the treasury signs only for an admin.
Passwords stay in this process: a keystore is created here (its KDF bounded by the
keystore's gate), and the task gets the new account's address, never the password.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from access import policy
from access.keys import Caller
from access.owners import Owners
from errors import ValidationError
from services.submit import Submitted, SubmittedMany, Submitter
from wallet.errors import AccountLocked
from wallet.keystore import Keystore
from wallet.unlock import UnlockStore


@dataclass
class Accounts:
    """ESP's accounts as one caller may use them."""

    caller: Caller
    keystore: Keystore
    unlocks: UnlockStore
    owners: Owners
    submitter: Submitter
    treasury: str
    funding_wei: int

    def create(self, password: str) -> Submitted:
        """A new account owned by the caller's key, funded with gas money by the treasury (a task)."""
        owner = self.caller.key_id

        def create_keystore() -> dict[str, Any]:
            account = self.keystore.create(password)
            self.owners.set_account_owner(account, owner)
            return {"address": account}

        return self.submitter.submit("fund_account", {"value_wei": self.funding_wei}, prepare=create_keystore, secret=password)

    def visible(self) -> list[str]:
        """The accounts the caller may see: an admin every account of the keystore, a user those its key created."""
        every = self.keystore.list()
        if self.caller.is_admin:
            return every
        mine = self.owners.accounts_of(self.caller.key_id)
        return [a for a in every if a in mine]

    def listing(self) -> dict[str, Any]:
        """The caller's accounts and whether each is unlocked now; an admin's listing names the treasury too."""
        accounts = [{"address": a, "unlocked": self.unlocks.is_unlocked(a), "unlocked_for_s": max(self.unlocks.ttl(a), 0)}
                    for a in self.visible()]
        body: dict[str, Any] = {"accounts": accounts, "count": len(accounts)}
        if self.caller.is_admin:
            body["treasury"] = self.treasury
        return body

    def check_acts_as(self, account: str, field: str) -> None:
        """Refuse (403) an account the caller may not act as."""
        policy.check_acts_as(self.caller, account, field, owners=self.owners, treasury=self.treasury)

    def unlock(self, account: str, password: str, seconds: int, *, field: str = "address") -> None:
        """Unlock one of the caller's accounts: the ownership check comes before any KDF work."""
        self.check_acts_as(account, field)
        self.unlocks.unlock(account, password, seconds, self.keystore)

    def check_owned(self, account: str, field: str) -> None:
        """Refuse an account the caller may not act as (403), then one that is not in ESP's keystore (422)."""
        self.check_acts_as(account, field)
        if account != self.treasury and not self.keystore.has(account):
            raise ValidationError(field, f"{account} is not an account of ESP's keystore", status=422)

    def send_eth_many(self, transfers: list[tuple[str, str, int]], *, field: str = "transactions") -> SubmittedMany:
        """Send many ETH transfers (from, to, value) at once: every sender is checked before any is accepted,
        then all are accepted together (one task each) or none is."""
        checked: set[str] = set()
        for i, (sender, _, _) in enumerate(transfers):
            if sender not in checked:
                self.check_signer(sender, f"{field}[{i}].from")
                checked.add(sender)
        return self.submitter.submit_many("send_eth", [{"sender": s, "to": t, "value_wei": v} for s, t, v in transfers])

    def check_signer(self, account: str, field: str) -> None:
        """Refuse, before anything is enqueued, a sender the caller may not sign as, or one that is locked."""
        self.check_owned(account, field)
        if account != self.treasury and not self.unlocks.is_unlocked(account):
            raise AccountLocked(account)

    def send_eth(self, sender: str, to: str, value_wei: int) -> Submitted:
        """Send ETH from one of the caller's accounts (unlocked), or the treasury for an admin."""
        self.check_signer(sender, "from")
        return self.submitter.submit("send_eth", {"sender": sender, "to": to, "value_wei": value_wei})
