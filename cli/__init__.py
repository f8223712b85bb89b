"""``esp``: the operators' command line, a client of ESP's HTTP API (it may run on another machine).

    cli.client    the API's URL and key (ESP_API_URL, ESP_API_KEY), requests, problems as one line
    cli.views     what the commands print: rich tables of the pool, a task, events, keys
    cli.follow    progress bars that follow a long operation (a drain, a recycle, the stack getting ready)
    cli.main      the typer app: one function per command
"""
