"""What callers own: each ESP account belongs to the API key that created it; each
stored project file is bound to the publishers who uploaded its bytes.

Redis, owned here::

    esp:account-owners          hash  checksummed address -> id of the key that created the account
    esp:file-publishers:<hash>  set   checksummed addresses of the publishers who uploaded the file
                                      whose SHA-256 is <hash> (0x hex, lower case)
"""

from __future__ import annotations

import redis

from nodepool.codec import as_text

ACCOUNT_OWNERS = "esp:account-owners"
FILE_PUBLISHERS = "esp:file-publishers:{}"


class Owners:
    """Ownership records in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    # -- accounts ----------------------------------------------------------------------------------

    def set_account_owner(self, address: str, key_id: str) -> None:
        self.redis.hset(ACCOUNT_OWNERS, address, key_id)

    def account_owner(self, address: str) -> str | None:
        owner = self.redis.hget(ACCOUNT_OWNERS, address)
        return as_text(owner) if owner is not None else None

    def accounts_of(self, key_id: str) -> set[str]:
        """The addresses a key owns (one HGETALL: accounts are few per deployment, thousands at most)."""
        return {as_text(a) for a, owner in self.redis.hgetall(ACCOUNT_OWNERS).items() if as_text(owner) == key_id}

    # -- files -------------------------------------------------------------------------------------

    def bind_file(self, digest: str, publisher: str) -> None:
        """Record that ``publisher`` uploaded the bytes whose SHA-256 is ``digest``."""
        self.redis.sadd(FILE_PUBLISHERS.format(digest.lower()), publisher)

    def file_uploaded_by(self, digest: str, publisher: str) -> bool:
        return bool(self.redis.sismember(FILE_PUBLISHERS.format(digest.lower()), publisher))

    def file_has_uploader(self, digest: str) -> bool:
        return bool(self.redis.exists(FILE_PUBLISHERS.format(digest.lower())))
