"""The JSON-RPC gateway's server: ``POST /rpc`` on its own port (ESP_RPC_PORT, 8545), an aiohttp app.

The Procfile's ``rpc`` line runs it under gunicorn (``gunicorn_rpc.conf.py``: ESP_RPC_PROCESSES asyncio
workers); ``server.make_app`` builds it for tests. The work is the ``gateway`` package's; this edge
authenticates, limits, reads the body, and renders what the gateway answers.
"""
