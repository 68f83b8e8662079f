"""httpbin under gunicorn, with a bad day on a schedule.

A WSGI middleware around httpbin's app: for `BAD_SECS` seconds out of every `DAY_SECS`
(measured from the worker's start), `BAD_SHARE` of requests answer 503 after `BAD_DELAY_MS`,
as a service whose database is failing does. The rest of the time httpbin answers as itself.

    gunicorn --workers 4 --bind 127.0.0.1:8000 bad_day:app

Environment (defaults): DAY_SECS (30), BAD_SECS (12), BAD_START_SECS (4), BAD_SHARE (0.4),
BAD_DELAY_MS (20), SEED (7). Every worker draws from its own seeded generator, so a day's error
share is BAD_SHARE on average across workers.
"""

import os
import random
import time

from httpbin import app as httpbin

DAY_SECS = float(os.environ.get("DAY_SECS", "30"))
BAD_SECS = float(os.environ.get("BAD_SECS", "12"))
BAD_START_SECS = float(os.environ.get("BAD_START_SECS", "4"))
BAD_SHARE = float(os.environ.get("BAD_SHARE", "0.4"))
BAD_DELAY_MS = float(os.environ.get("BAD_DELAY_MS", "20"))
# Every worker shares the schedule: it starts at the master's start, passed down by gunicorn's
# environment (set once in `on_starting`, see gunicorn.conf.py), or at import otherwise.
EPOCH = float(os.environ.get("BAD_DAY_EPOCH", time.time()))
_random = random.Random(int(os.environ.get("SEED", "7")) * 1000 + os.getpid())


def bad_now(now=None):
    """Whether the service is in its bad period now."""
    second = ((now or time.time()) - EPOCH) % DAY_SECS
    return BAD_START_SECS <= second < BAD_START_SECS + BAD_SECS


def app(environ, start_response):
    if bad_now() and _random.random() < BAD_SHARE:
        time.sleep(BAD_DELAY_MS / 1000)
        body = b'{"error": "database unavailable"}\n'
        start_response(
            "503 Service Unavailable",
            [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
        )
        return [body]
    return httpbin(environ, start_response)
