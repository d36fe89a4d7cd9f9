"""The NLG server's defaults, in a module that imports nothing, so that the command line can
show them in ``--help`` without importing the server."""

HOST = "127.0.0.1"
PORT = 5056
MAX_BODY_BYTES = 1_000_000  # Rasa posts the whole tracker: about 1.7 KB per turn
MAX_EVENTS = 10_000  # only the last N tracker events are read
SHUTDOWN_TIMEOUT = 30.0  # seconds in-flight requests may take after SIGTERM
MAX_BATCH_SIZE = 32  # contexts per decoded batch
BATCH_WAIT_MS = 5.0  # how long a batch waits to fill
