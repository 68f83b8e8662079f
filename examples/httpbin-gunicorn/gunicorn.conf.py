# gunicorn settings for the example: a pool of sync workers (the python-wsgi-workers pattern's
# upstream), and one bad-day schedule for all of them.
import os
import time

workers = int(os.environ.get("WORKERS", "4"))
worker_class = "sync"
bind = os.environ.get("BIND", "127.0.0.1:8000")
accesslog = None
loglevel = "warning"


def on_starting(server):
    os.environ.setdefault("BAD_DAY_EPOCH", str(time.time()))
