"""ESP's wallet: keys kept by ESP (keystore), unlocking, nonces in Redis, local signing and safe broadcast.

Plain functions and classes; Redis clients and RpcClients are passed in. The
Celery tasks and HTTP routes of the write path are thin wrappers around them.
"""
