"""Who may do what: callers identified by API keys with a role, and what they own.

``access.keys`` keeps API keys (hashed, revocable) and turns a presented key into a
``Caller``; ``access.owners`` records which key owns each ESP account and which
publishers uploaded each stored file; ``access.policy`` answers "may this caller
do this" by raising ``Unauthorized`` or ``Forbidden``. No web, no queue: the API's
edges call these and render the errors.
"""
