"""Keep N wrong-password unlocks in flight against a running API until stopped (``python -m tests.security.flood``).

A process of its own, so that the load generator's threads do not compete for the
measuring test's GIL. Each client thread re-sends as soon as its guess is answered;
when refused (503 or 429) it first waits the answer's Retry-After, or, with
``--ignore-retry-after``, re-sends at once as a flood would. Prints the count of each
HTTP status as JSON when its stdin closes.

    python -m tests.security.flood <unlock url> <API key> <clients> [--ignore-retry-after]
"""

from __future__ import annotations

import json
import sys
import threading
from collections import Counter

import requests


def main() -> None:
    url, key, clients = sys.argv[1], sys.argv[2], int(sys.argv[3])
    honour_retry_after = "--ignore-retry-after" not in sys.argv[4:]
    stop = threading.Event()
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def unlock_wrongly() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                response = session.post(url, json={"password": "a wrong guess", "seconds": 60},
                                        headers={"Authorization": f"Bearer {key}"}, timeout=30)
                with lock:
                    statuses[response.status_code] += 1
                    if response.status_code == 403 and statuses[403] == 1:
                        print("checked", flush=True)  # the first password check ran: the test starts measuring
                if honour_retry_after and "Retry-After" in response.headers:
                    stop.wait(float(response.headers["Retry-After"]))

    threads = [threading.Thread(target=unlock_wrongly) for _ in range(clients)]
    for t in threads:
        t.start()
    sys.stdin.read()  # until the test closes our stdin
    stop.set()
    for t in threads:
        t.join(60)
    print(json.dumps(dict(statuses)), flush=True)


if __name__ == "__main__":
    main()
