"""The rules: who may sign as an account, read it, or act as an admin.

- No key, or a key that is not live: ``Unauthorized`` (401).
- An admin may do anything; the treasury signs only for an admin (and for ESP's own
  funding, which no caller asks for).
- A user may act only as the accounts its key created.
"""

from __future__ import annotations

from access.keys import Caller
from access.owners import Owners
from errors import Forbidden, Unauthorized


def require_caller(caller: Caller | None) -> Caller:
    """The caller, or Unauthorized when the request carried no valid key."""
    if caller is None:
        raise Unauthorized("this needs an API key: send Authorization: Bearer <key>")
    return caller


def require_admin(caller: Caller | None) -> Caller:
    """The caller if it holds the admin role; Unauthorized without a key, Forbidden with a user's."""
    caller = require_caller(caller)
    if not caller.is_admin:
        raise Forbidden("this is an admin operation: the API key's role is user", field="Authorization")
    return caller


def check_acts_as(caller: Caller | None, account: str, field: str, *, owners: Owners, treasury: str) -> Caller:
    """Refuse unless ``caller`` may sign as, or act in the name of, ``account``."""
    caller = require_caller(caller)
    if account == treasury:
        if not caller.is_admin:
            raise Forbidden("the treasury signs only for an admin", field=field)
        return caller
    if caller.is_admin:
        return caller
    if owners.account_owner(account) != caller.key_id:
        raise Forbidden(f"{account} is not an account of this API key", field=field)
    return caller
