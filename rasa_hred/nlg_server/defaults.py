"""The NLG server's defaults, in a module that imports nothing, so that the command line can
show them in ``--help`` without importing the server."""

HOST = "127.0.0.1"
PORT = 5056
# Rasa posts the whole tracker on every call, about 2.3 KB per turn: 20,000 turns are 46 MB.
MAX_BODY_BYTES = 64 * 1024 * 1024  # larger requests get 413 (about 29,000 turns)
MAX_EVENTS = 10_000  # only the last N tracker events are kept (reading stops at a session start)
SHUTDOWN_TIMEOUT = 30.0  # seconds in-flight requests may take after SIGTERM
REQUEST_TIMEOUT = 30.0  # seconds from a request's first byte to its last (else 408)
RESPONSE_TIMEOUT = 60.0  # seconds from a request's first byte to its answer (else 503)
KEEP_ALIVE_TIMEOUT = 5.0  # seconds an idle connection is kept open
# A refused body is read and dropped, up to these bounds, so that the client sees the 413.
LINGER_SECONDS = 5.0
LINGER_BYTES = 256 * 1024 * 1024
MAX_BATCH_SIZE = 32  # contexts per decoded batch
BATCH_WAIT_MS = 0.0  # extra wait for a batch to fill (an idle server starts one at once)
