"""Verification of Alexa custom-skill requests (Amazon's rules for web-service skills).

Every request Alexa sends to a skill hosted as a web service carries a certificate chain URL
(``SignatureCertChainUrl``) and a signature of the raw body (``Signature-256``, legacy
``Signature``). A skill must check, in this order of cost:

1. the chain URL: ``https``, host ``s3.amazonaws.com``, path under ``/echo.api/`` after
   normalisation, port absent or 443 (and here, before any download: no query or fragment,
   and a file name of Amazon's form, see :func:`canonical_cert_url`);
2. the chain: the leaf is valid now, names ``echo-api.amazon.com`` in its subject alternative
   names and chains to a trusted root;
3. the signature: RSA PKCS#1 v1.5 over the raw body (SHA-256, or SHA-1 for the legacy header);
4. the request timestamp: within 150 seconds of now;
5. the application id: the configured skill id.

Everything here is independent of Rasa and Sanic: the building blocks are plain functions, and
:class:`RequestVerifier` combines them with a certificate chain cache (memory, then an
optional cache directory, then an HTTPS download). Every rejection is a
:class:`VerificationError` with a short ``reason`` and an HTTP ``status`` (400; 503 when all
download slots are busy); the channel logs the reason and answers with the status.

Unsigned requests are cheap to send, so each one's cost is bounded before the expensive work:
only the canonical form of Amazon's URL is fetched, downloads run at most
``max_concurrent_downloads`` at a time, a URL whose chain failed is refused for
``failure_ttl`` seconds without a new download, and only a chain that validated **and** checked
a request's signature enters the cache that serves later requests (memory and directory, both
bounded, least recently used first). Validated chains that have not yet checked a signature
wait in a small cache of their own, so they can never evict a chain in use.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import posixpath
import re
import ssl
import tempfile
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509 import verification as x509_verification

from alexa_connector.envelope import value_at

logger = logging.getLogger(__name__)

ALEXA_CERT_HOST = "s3.amazonaws.com"
ALEXA_CERT_PATH_PREFIX = "/echo.api/"
#: The chain's file name under ``/echo.api/``. Amazon documents only the folder; every name it
#: has served has this form: ``echo-api-cert.pem``, ``echo-api-cert-12.pem``,
#: ``echo-api-cert-6-ats.pem`` (lower-case letters and digits after each dash).
ALEXA_CERT_NAME_RE = re.compile(r"echo-api-cert(?:-[0-9a-z]{1,16}){0,3}\.pem")
#: Longer ``SignatureCertChainUrl`` values are refused unread (Amazon's are about 55 chars).
MAX_CERT_URL_CHARS = 256
ALEXA_SAN = "echo-api.amazon.com"
MAX_TIMESTAMP_TOLERANCE_S = 150.0

# Defaults of the bounds on what unsigned requests can make the verifier do.
#: Chains that checked a signature, kept in memory.
MEMORY_CACHE_SIZE = 32
#: Chains that validated but have not checked a signature yet (kept apart, see the module).
PENDING_CACHE_SIZE = 8
#: Files and bytes in ``certificate_cache_dir``.
CACHE_DIR_MAX_FILES = 16
CACHE_DIR_MAX_BYTES = 1_000_000
#: A chain larger than this is not downloaded (Amazon's is about 4 KB).
MAX_CHAIN_BYTES = 64_000
#: Downloads running at once; a request that needs one more is answered 503 at once.
MAX_CONCURRENT_DOWNLOADS = 4
#: Seconds a URL whose chain could not be downloaded or validated is refused without a retry.
FAILURE_TTL_S = 30.0
#: URLs remembered as failed (the oldest is forgotten first).
FAILURE_CACHE_SIZE = 1024

SignatureAlgorithm = Literal["sha256", "sha1"]
_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha1": hashes.SHA1,
}
_PEM_CERT_RE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


class VerificationError(Exception):
    """A request failed verification; ``reason`` is short and safe to log, ``status`` is the
    HTTP status to answer with."""

    status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DownloadsBusy(VerificationError):
    """Every download slot is taken: the request is not refused as forged, but not verified
    either (503, so that a flood of new URLs cannot queue up work)."""

    status = 503


# --------------------------------------------------------------------------- small helpers


def _utc(moment: datetime) -> datetime:
    """An aware UTC datetime (naive values are taken to be UTC)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _short(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cache_file_name(url: str) -> str:
    """The cache-directory file name for a (canonical) chain URL: ``<sha256 hex of it>.pem``."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest() + ".pem"


def _check_tolerance(tolerance_s: float) -> float:
    tolerance = float(tolerance_s)
    if not 0 <= tolerance <= MAX_TIMESTAMP_TOLERANCE_S:
        raise ValueError(
            f"timestamp tolerance must be between 0 and {MAX_TIMESTAMP_TOLERANCE_S:g} seconds "
            f"(Amazon's limit), got {tolerance_s!r}"
        )
    return tolerance


# --------------------------------------------------------------------------- building blocks


def canonical_cert_url(url: str) -> str:
    """Apply Amazon's rules to a ``SignatureCertChainUrl`` value; return its canonical form,
    ``https://s3.amazonaws.com/echo.api/<name>`` (the only URL ever fetched or cached).

    Scheme ``https`` and host ``s3.amazonaws.com`` (both case-insensitive), port absent or
    443, no user information, and a path that is ``/echo.api/<name>`` (case-sensitive) once
    ``.``, ``..`` and empty segments are resolved. Stricter than Amazon's text, so that one
    chain has one URL: no query or fragment, no percent-encoding, printable ASCII only, at
    most :data:`MAX_CERT_URL_CHARS` characters, and ``<name>`` of the form
    :data:`ALEXA_CERT_NAME_RE`.
    """
    if not isinstance(url, str) or not url.strip():
        raise VerificationError("missing certificate chain URL")
    url = url.strip()
    if len(url) > MAX_CERT_URL_CHARS:
        raise VerificationError("certificate chain URL is too long")
    if not (url.isascii() and url.isprintable()) or " " in url:
        raise VerificationError("certificate chain URL has unexpected characters")
    if "?" in url or "#" in url:
        raise VerificationError("certificate chain URL has a query or fragment")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise VerificationError(f"malformed certificate chain URL: {_short(exc)}") from None
    if parts.scheme.lower() != "https":
        raise VerificationError("certificate chain URL is not https")
    if parts.username is not None or parts.password is not None:
        raise VerificationError("certificate chain URL carries user information")
    if (parts.hostname or "") != ALEXA_CERT_HOST:  # .hostname is lower-cased
        raise VerificationError(f"certificate chain URL host is not {ALEXA_CERT_HOST}")
    if port not in (None, 443):
        raise VerificationError("certificate chain URL port is not 443")
    if "%" in parts.path:
        raise VerificationError("certificate chain URL path is percent-encoded")
    folder, name = posixpath.split(posixpath.normpath(parts.path or "/"))
    if folder + "/" != ALEXA_CERT_PATH_PREFIX:
        raise VerificationError(f"certificate chain URL path is not under {ALEXA_CERT_PATH_PREFIX}")
    if not ALEXA_CERT_NAME_RE.fullmatch(name):
        raise VerificationError("certificate chain URL file name is not Amazon's")
    return f"https://{ALEXA_CERT_HOST}{ALEXA_CERT_PATH_PREFIX}{name}"


def parse_pem_chain(data: bytes) -> list[x509.Certificate]:
    """Parse a PEM certificate chain (leaf first); empty or unparsable input is rejected."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise VerificationError("certificate chain is not bytes")
    try:
        chain = x509.load_pem_x509_certificates(bytes(data))
    except ValueError as exc:
        raise VerificationError(f"unparsable certificate chain: {_short(exc)}") from None
    if not chain:
        raise VerificationError("empty certificate chain")
    return chain


def load_trusted_roots(pem_path: str | Path | None = None) -> list[x509.Certificate]:
    """Load trusted root certificates from a PEM bundle (``None``: certifi's bundle).

    Certificates that cryptography cannot load, or cannot put in a trust store, are skipped
    (and counted in the log) instead of failing the whole bundle. A configuration problem - an
    unreadable file or no usable certificate - raises :class:`ValueError`.
    """
    if pem_path is None:
        import certifi

        pem_path = certifi.where()
    path = Path(pem_path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read trusted roots from {path}: {_short(exc)}") from exc

    roots: list[x509.Certificate] = []
    skipped = 0
    for block in _PEM_CERT_RE.findall(data):
        with warnings.catch_warnings():
            # e.g. negative serial numbers in old roots: usable, but cryptography warns.
            warnings.simplefilter("ignore")
            try:
                cert = x509.load_pem_x509_certificate(block)
                x509_verification.Store([cert])
            except Exception:  # any certificate cryptography rejects is skipped
                skipped += 1
                continue
        roots.append(cert)
    if skipped:
        logger.warning("Skipped %d unusable certificate(s) in %s", skipped, path)
    if not roots:
        raise ValueError(f"no usable trusted root certificate in {path}")
    logger.debug("Loaded %d trusted root certificate(s) from %s", len(roots), path)
    return roots


def _check_leaf_validity(leaf: x509.Certificate, now: datetime) -> None:
    if now < leaf.not_valid_before_utc:
        raise VerificationError("signing certificate is not yet valid")
    if now > leaf.not_valid_after_utc:
        raise VerificationError("signing certificate has expired")


def _check_leaf_san(leaf: x509.Certificate) -> None:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise VerificationError("signing certificate has no subject alternative names") from None
    except ValueError as exc:  # malformed or duplicate extensions
        raise VerificationError(f"malformed signing certificate: {_short(exc)}") from None
    names = {name.lower() for name in san.get_values_for_type(x509.DNSName)}
    if ALEXA_SAN not in names:
        raise VerificationError(f"signing certificate SAN does not contain {ALEXA_SAN}")


def _build_verified_chain(
    chain: Sequence[x509.Certificate],
    store: x509_verification.Store,
    now: datetime,
) -> list[x509.Certificate]:
    """Checks of :func:`verify_chain`; returns the validated path (leaf ... trusted root)."""
    if not chain:
        raise VerificationError("empty certificate chain")
    now = _utc(now)
    leaf, intermediates = chain[0], list(chain[1:])
    _check_leaf_validity(leaf, now)
    _check_leaf_san(leaf)
    verifier = (
        x509_verification.PolicyBuilder()
        .store(store)
        .time(now)
        .build_server_verifier(x509.DNSName(ALEXA_SAN))
    )
    try:
        return verifier.verify(leaf, intermediates)
    except x509_verification.VerificationError as exc:
        raise VerificationError(f"certificate chain not trusted: {_short(exc)}") from None
    except ValueError as exc:  # malformed certificates
        raise VerificationError(f"invalid certificate chain: {_short(exc)}") from None


def _as_store(
    roots: x509_verification.Store | Sequence[x509.Certificate],
) -> x509_verification.Store:
    if isinstance(roots, x509_verification.Store):
        return roots
    try:
        return x509_verification.Store(list(roots))
    except (TypeError, ValueError) as exc:
        raise VerificationError(f"unusable trusted roots: {_short(exc)}") from None


def verify_chain(
    chain: Sequence[x509.Certificate],
    roots: x509_verification.Store | Sequence[x509.Certificate],
    now: datetime,
) -> x509.Certificate:
    """Validate a certificate chain (``chain[0]`` is the leaf) at ``now``; return the leaf.

    The leaf must be valid at ``now``, carry DNS SAN ``echo-api.amazon.com`` and chain
    through the given intermediates to one of ``roots`` (a list of certificates or a
    ``Store``), following cryptography's web-PKI path validation.
    """
    _build_verified_chain(chain, _as_store(roots), now)
    return chain[0]


def verify_signature(
    leaf: x509.Certificate,
    body: bytes,
    signature_b64: str | None,
    *,
    algorithm: SignatureAlgorithm = "sha256",
) -> None:
    """Check a base64 RSA PKCS#1 v1.5 signature of the raw ``body`` with ``leaf``'s key.

    ``algorithm`` is ``"sha256"`` for the ``Signature-256`` header and ``"sha1"`` for the
    legacy ``Signature`` header.
    """
    if algorithm not in _HASHES:
        raise ValueError(f"unsupported signature algorithm {algorithm!r}")
    if not signature_b64 or not isinstance(signature_b64, str):
        raise VerificationError("missing request signature")
    try:
        signature = base64.b64decode(signature_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise VerificationError("request signature is not valid base64") from None
    if not signature:
        raise VerificationError("missing request signature")
    try:
        public_key = leaf.public_key()
    except (ValueError, TypeError) as exc:
        raise VerificationError(f"unusable signing key: {_short(exc)}") from None
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise VerificationError("signing certificate key is not RSA")
    try:
        public_key.verify(signature, bytes(body), padding.PKCS1v15(), _HASHES[algorithm]())
    except InvalidSignature:
        raise VerificationError("request signature does not match the body") from None
    except (ValueError, TypeError) as exc:
        raise VerificationError(f"request signature check failed: {_short(exc)}") from None


def _parse_timestamp(timestamp: object) -> datetime:
    if not isinstance(timestamp, str) or not timestamp.strip():
        raise VerificationError("missing request timestamp")
    text = timestamp.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    try:
        return _utc(datetime.fromisoformat(text))
    except ValueError:
        raise VerificationError("malformed request timestamp") from None


def verify_timestamp(
    timestamp: object, now: datetime, tolerance_s: float = MAX_TIMESTAMP_TOLERANCE_S
) -> None:
    """The request timestamp (an ISO-8601 string, e.g. ``2026-11-25T10:00:00Z``; anything
    else is rejected, as it comes from the untrusted body) must be within
    ``tolerance_s`` seconds of ``now``, in the past or the future.

    A tolerance above Amazon's 150 seconds (or below zero) is a configuration error
    (:class:`ValueError`).
    """
    tolerance = _check_tolerance(tolerance_s)
    moment = _parse_timestamp(timestamp)
    skew = (moment - _utc(now)).total_seconds()
    if skew < -tolerance:
        raise VerificationError(f"request timestamp is stale ({-skew:.0f} s old)")
    if skew > tolerance:
        raise VerificationError(f"request timestamp is in the future ({skew:.0f} s ahead)")


def parse_request_body(body: bytes) -> dict[str, Any]:
    """The request body as JSON: an object with a ``request`` object, or a
    :class:`VerificationError`."""
    try:
        request_json = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise VerificationError("request body is not JSON") from None
    if not isinstance(request_json, dict):
        raise VerificationError("request body is not a JSON object")
    if not isinstance(request_json.get("request"), dict):
        raise VerificationError("request body has no request object")
    return request_json


def verify_application_id(request_json: Mapping[str, Any], skill_id: str) -> None:
    """``context.System.application.applicationId`` (else ``session.application...``) must be
    the configured skill id."""
    app_id = value_at(request_json, "context", "System", "application", "applicationId")
    if app_id is None:
        app_id = value_at(request_json, "session", "application", "applicationId")
    if not isinstance(app_id, str) or not app_id:
        raise VerificationError("missing application id")
    if app_id != skill_id:
        raise VerificationError("application id does not match the skill id")


# --------------------------------------------------------------------------- download


async def download_chain_pem(
    url: str,
    *,
    timeout: float,
    max_bytes: int,
    ssl_context: ssl.SSLContext | None = None,
) -> bytes:
    """GET ``url`` (no redirects) within ``timeout`` seconds, at most ``max_bytes`` bytes.

    The URL is not checked here (callers apply :func:`canonical_cert_url` first). Every
    failure is a :class:`VerificationError`.
    """
    import aiohttp

    async def fetch() -> bytes:
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        async with (
            aiohttp.ClientSession(timeout=client_timeout) as session,
            session.get(url, allow_redirects=False, ssl=ssl_context) as response,
        ):
            if response.status != 200:
                raise VerificationError(
                    f"certificate chain download failed: HTTP {response.status}"
                )
            if response.content_length is not None and response.content_length > max_bytes:
                raise VerificationError("certificate chain download is too large")
            data = bytearray()
            async for chunk in response.content.iter_chunked(8192):
                data.extend(chunk)
                if len(data) > max_bytes:
                    raise VerificationError("certificate chain download is too large")
            return bytes(data)

    try:
        return await asyncio.wait_for(fetch(), timeout)
    except VerificationError:
        raise
    except asyncio.TimeoutError:
        raise VerificationError("certificate chain download timed out") from None
    except aiohttp.ClientConnectorError as exc:  # str(exc) includes the SSL context's repr
        detail = _short(exc.os_error) if exc.os_error is not None else type(exc).__name__
        raise VerificationError(f"certificate chain download failed: {detail}") from None
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        raise VerificationError(f"certificate chain download failed: {_short(exc)}") from None


def _default_ssl_context() -> ssl.SSLContext:
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


# --------------------------------------------------------------------------- chain cache

V = TypeVar("V")
_CACHE_FILE_RE = re.compile(r"[0-9a-f]{64}\.pem")


class _LRU(Generic[V]):
    """A mapping of at most ``size`` keys that forgets the least recently used one first."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("cache size must be at least 1")
        self.size = int(size)
        self._items: OrderedDict[str, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def keys(self) -> list[str]:
        """Least recently used first."""
        return list(self._items)

    def get(self, key: str) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def pop(self, key: str) -> V | None:
        return self._items.pop(key, None)


@dataclass(frozen=True)
class CachedChain:
    """A certificate chain that passed validation, with the window in which that holds.

    ``not_before`` / ``not_after`` is the intersection of the validity periods of every
    certificate on the validated path (leaf to root); ``pem`` is the chain as downloaded.
    """

    certificates: tuple[x509.Certificate, ...]
    not_before: datetime
    not_after: datetime
    pem: bytes

    @property
    def leaf(self) -> x509.Certificate:
        return self.certificates[0]

    def valid_at(self, now: datetime) -> bool:
        return self.not_before <= _utc(now) <= self.not_after


class ChainDirectory:
    """``certificate_cache_dir``: a ``<sha256 hex of the canonical URL>.pem`` file per chain
    that checked a request's signature, so that a restarted server need not download it.

    At most ``max_files`` such files and ``max_bytes`` bytes: storing one removes the least
    recently used (oldest modification time; a file is touched whenever its chain is
    stored again). Other files in the directory are left alone. Files are trusted as
    *content* only: whatever is read from them is validated again.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_files: int = CACHE_DIR_MAX_FILES,
        max_bytes: int = CACHE_DIR_MAX_BYTES,
        max_file_bytes: int = MAX_CHAIN_BYTES,
    ) -> None:
        if max_files < 1 or max_file_bytes < 1:
            raise ValueError("the cache directory must hold at least one chain")
        if max_bytes < max_file_bytes:
            raise ValueError(
                f"the cache directory's byte limit ({max_bytes}) is below the size of one "
                f"chain ({max_file_bytes})"
            )
        self.path = Path(path)
        self.max_files = int(max_files)
        self.max_bytes = int(max_bytes)
        self.max_file_bytes = int(max_file_bytes)

    def path_for(self, url: str) -> Path:
        return self.path / cache_file_name(url)

    def files(self) -> list[Path]:
        """The cache's own files (``<64 hex>.pem``), least recently used first."""
        return [path for path, _ in self._sized_files()]

    def _sized_files(self) -> list[tuple[Path, int]]:
        found = []
        with contextlib.suppress(OSError):
            for path in self.path.iterdir():
                if _CACHE_FILE_RE.fullmatch(path.name):
                    with contextlib.suppress(OSError):
                        stat = path.stat()
                        found.append((stat.st_mtime_ns, path, stat.st_size))
        return [(path, size) for _, path, size in sorted(found)]

    def read(self, url: str) -> bytes | None:
        """The cached PEM for ``url``, or ``None`` when there is no cache file."""
        path = self.path_for(url)
        try:
            if path.stat().st_size > self.max_file_bytes:
                raise VerificationError("cached certificate chain is too large")
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise VerificationError(
                f"cannot read cached certificate chain: {_short(exc)}"
            ) from None

    def store(self, url: str, pem: bytes) -> None:
        """Store ``pem`` for ``url`` atomically (or mark it used when it is there already),
        then remove the least recently used files over the limits. Failures are logged,
        never raised."""
        path = self.path_for(url)
        tmp_name = None
        try:
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".chain-", suffix=".tmp")
                with os.fdopen(fd, "wb") as handle:
                    handle.write(pem)
                os.replace(tmp_name, path)
                tmp_name = None
            now_ns = time.time_ns()  # explicit: the file system's own clock is coarser
            os.utime(path, ns=(now_ns, now_ns))
            self._evict(keep=path)
        except OSError as exc:
            logger.warning("Could not cache the certificate chain in %s: %s", path, exc)
        finally:
            if tmp_name is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_name)

    def _evict(self, keep: Path) -> None:
        sized = self._sized_files()
        count, total = len(sized), sum(size for _, size in sized)
        for path, size in sized:  # least recently used first
            if count <= self.max_files and total <= self.max_bytes:
                break
            if path == keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            count, total = count - 1, total - size


class CertificateChainCache:
    """Where validated chains live between requests.

    - ``proven`` (``max_entries``, LRU): chains that checked a request's signature; they serve
      later requests, and only they are written to the optional cache directory.
    - ``pending`` (``max_pending``, LRU): chains that validated but have not checked a
      signature yet (a genuine Amazon URL sent with a forged signature lands here). Kept
      apart so that no number of such requests can evict a proven chain.
    """

    def __init__(
        self,
        cache_dir: str | Path | None = None,
        *,
        max_entries: int = MEMORY_CACHE_SIZE,
        max_pending: int = PENDING_CACHE_SIZE,
        max_files: int = CACHE_DIR_MAX_FILES,
        max_bytes: int = CACHE_DIR_MAX_BYTES,
        max_file_bytes: int = MAX_CHAIN_BYTES,
    ) -> None:
        self.proven: _LRU[CachedChain] = _LRU(max_entries)
        self.pending: _LRU[CachedChain] = _LRU(max_pending)
        self.directory = (
            None
            if cache_dir is None
            else ChainDirectory(
                cache_dir, max_files=max_files, max_bytes=max_bytes, max_file_bytes=max_file_bytes
            )
        )

    @property
    def cache_dir(self) -> Path | None:
        return None if self.directory is None else self.directory.path

    def __len__(self) -> int:
        return len(self.proven)

    def __contains__(self, url: object) -> bool:
        return url in self.proven

    def urls(self) -> list[str]:
        """URLs of the proven chains in memory, least recently used first."""
        return self.proven.keys()

    def lookup(self, url: str, now: datetime) -> CachedChain | None:
        """The chain in memory for ``url`` that is valid at ``now`` (proven first); one outside
        its window is dropped."""
        for tier in (self.proven, self.pending):
            entry = tier.get(url)
            if entry is not None:
                if entry.valid_at(now):
                    return entry
                tier.pop(url)
        return None

    def add_pending(self, url: str, entry: CachedChain) -> None:
        self.pending.put(url, entry)

    def promote(self, url: str, entry: CachedChain) -> None:
        """``entry`` checked a signature: keep it with the proven chains (and on disk)."""
        if self.proven.get(url) is entry:
            return
        self.pending.pop(url)
        self.proven.put(url, entry)
        if self.directory is not None:
            self.directory.store(url, entry.pem)

    def discard(self, url: str) -> None:
        self.proven.pop(url)
        self.pending.pop(url)

    def read_file(self, url: str) -> bytes | None:
        """The cached PEM for ``url``, or ``None`` (no file, or no cache directory)."""
        return None if self.directory is None else self.directory.read(url)


# --------------------------------------------------------------------------- the verifier


class RequestVerifier:
    """Verify Alexa requests against Amazon's rules; see :meth:`verify`.

    ``trusted_roots`` is a PEM bundle path (``None``: certifi's bundle) or a list of root
    certificates. ``timestamp_tolerance`` may not exceed 150 s. ``clock`` returns the current
    time (aware UTC; used for chain validity, the timestamp check and ``failure_ttl``). The
    other options bound what an unsigned request can cost (module constants hold the
    defaults): the caches' sizes, ``max_concurrent_downloads`` (a request that needs one more
    is refused with :class:`DownloadsBusy`, 503) and ``failure_ttl`` (seconds a URL whose chain
    failed is refused without a new download; 0: retry every time).
    """

    def __init__(
        self,
        skill_id: str,
        *,
        trusted_roots: str | Path | Sequence[x509.Certificate] | None = None,
        timestamp_tolerance: float = MAX_TIMESTAMP_TOLERANCE_S,
        certificate_cache_dir: str | Path | None = None,
        download_timeout: float = 5.0,
        max_chain_bytes: int = MAX_CHAIN_BYTES,
        memory_cache_size: int = MEMORY_CACHE_SIZE,
        pending_cache_size: int = PENDING_CACHE_SIZE,
        cache_dir_max_files: int = CACHE_DIR_MAX_FILES,
        cache_dir_max_bytes: int = CACHE_DIR_MAX_BYTES,
        max_concurrent_downloads: int = MAX_CONCURRENT_DOWNLOADS,
        failure_ttl: float = FAILURE_TTL_S,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if not isinstance(skill_id, str) or not skill_id.strip():
            raise ValueError("an Alexa skill id is required")
        if download_timeout <= 0:
            raise ValueError("download_timeout must be positive")
        if max_chain_bytes <= 0:
            raise ValueError("max_chain_bytes must be positive")
        if max_concurrent_downloads < 1:
            raise ValueError("max_concurrent_downloads must be at least 1")
        if not failure_ttl >= 0:
            raise ValueError("failure_ttl must be zero or more seconds")
        self.skill_id = skill_id.strip()
        self.timestamp_tolerance = _check_tolerance(timestamp_tolerance)
        if trusted_roots is None or isinstance(trusted_roots, (str, Path)):
            roots = load_trusted_roots(trusted_roots)
        else:
            roots = list(trusted_roots)
            if not roots:
                raise ValueError("no trusted root certificate given")
        self.trusted_roots: list[x509.Certificate] = roots
        self._store = x509_verification.Store(roots)
        self.download_timeout = float(download_timeout)
        self.max_chain_bytes = int(max_chain_bytes)
        self.cache = CertificateChainCache(
            certificate_cache_dir,
            max_entries=memory_cache_size,
            max_pending=pending_cache_size,
            max_files=cache_dir_max_files,
            max_bytes=cache_dir_max_bytes,
            max_file_bytes=self.max_chain_bytes,
        )
        self.max_concurrent_downloads = int(max_concurrent_downloads)
        self.failure_ttl = float(failure_ttl)
        self._clock = clock or _utcnow
        self._download_locks: dict[str, asyncio.Lock] = {}
        self._downloading = 0
        # URL -> (refused until, why it failed)
        self._failures: _LRU[tuple[datetime, str]] = _LRU(FAILURE_CACHE_SIZE)
        self._ssl_context: ssl.SSLContext | None = None

    def now(self) -> datetime:
        return _utc(self._clock())

    @property
    def downloads_in_flight(self) -> int:
        return self._downloading

    # -- chain retrieval -----------------------------------------------------------------

    def _validate(self, pem: bytes, now: datetime) -> CachedChain:
        certificates = parse_pem_chain(pem)
        path = _build_verified_chain(certificates, self._store, now)
        return CachedChain(
            certificates=tuple(certificates),
            not_before=max(cert.not_valid_before_utc for cert in path),
            not_after=min(cert.not_valid_after_utc for cert in path),
            pem=bytes(pem),
        )

    async def _download(self, url: str) -> bytes:
        """Fetch the PEM chain at ``url`` (already checked by :func:`canonical_cert_url`)."""
        if self._ssl_context is None:
            self._ssl_context = _default_ssl_context()
        return await download_chain_pem(
            url,
            timeout=self.download_timeout,
            max_bytes=self.max_chain_bytes,
            ssl_context=self._ssl_context,
        )

    async def _bounded_download(self, url: str) -> bytes:
        if self._downloading >= self.max_concurrent_downloads:
            raise DownloadsBusy("too many certificate chain downloads at once; try again")
        self._downloading += 1
        try:
            return await self._download(url)
        finally:
            self._downloading -= 1

    def _refuse_recent_failure(self, url: str, now: datetime) -> None:
        failure = self._failures.get(url)
        if failure is None:
            return
        until, reason = failure
        if not timedelta(0) < until - now <= timedelta(seconds=self.failure_ttl):
            self._failures.pop(url)  # over (or the clock was set back: do not refuse longer)
            return
        wait = (until - now).total_seconds()
        raise VerificationError(f"{reason} (not retried for {wait:.0f} s)")

    async def _load(self, url: str, now: datetime) -> CachedChain:
        """The chain from the cache directory, else downloaded; validated at ``now``."""
        pem = self.cache.read_file(url)
        if pem is None:
            pem = await self._bounded_download(url)
        return self._validate(pem, now)

    async def signing_chain(self, url: str, now: datetime | None = None) -> CachedChain:
        """The validated chain for ``url`` (made canonical) at ``now``: memory, then the cache
        directory, then a download.

        A chain found here has not necessarily checked a signature: :meth:`verify` promotes
        it to the proven chains once one checks. A URL whose chain fails (download or
        validation) is refused for ``failure_ttl`` seconds without a new attempt.
        """
        url = canonical_cert_url(url)
        now = self.now() if now is None else _utc(now)
        entry = self.cache.lookup(url, now)
        if entry is not None:
            return entry
        self._refuse_recent_failure(url, now)

        lock = self._download_locks.setdefault(url, asyncio.Lock())
        try:
            async with lock:
                entry = self.cache.lookup(url, now)  # a concurrent request may have fetched it
                if entry is not None:
                    return entry
                self._refuse_recent_failure(url, now)
                try:
                    entry = await self._load(url, now)
                except DownloadsBusy:
                    raise
                except VerificationError as exc:
                    if self.failure_ttl > 0:
                        until = now + timedelta(seconds=self.failure_ttl)
                        self._failures.put(url, (until, exc.reason))
                    raise
                self.cache.add_pending(url, entry)
                return entry
        finally:
            if not lock.locked() and self._download_locks.get(url) is lock:
                del self._download_locks[url]

    # -- the whole check -----------------------------------------------------------------

    async def verify(self, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        """Verify one Alexa request; return its parsed JSON body.

        ``headers`` are looked up case-insensitively; ``body`` must be the raw request bytes.
        Raises :class:`VerificationError` (only) on any failure.
        """
        try:
            return await self._verify(headers, body)
        except VerificationError:
            raise
        except Exception as exc:  # defensive: nothing else may escape to the channel
            logger.exception("Unexpected error while verifying an Alexa request")
            raise VerificationError(f"verification failed: {type(exc).__name__}") from None

    async def _verify(self, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        lowered = {str(key).lower(): value for key, value in headers.items()}
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise VerificationError("request body is not bytes")
        body = bytes(body)

        raw_url = lowered.get("signaturecertchainurl")
        if not raw_url:
            raise VerificationError("missing SignatureCertChainUrl header")
        url = canonical_cert_url(raw_url)

        signature = lowered.get("signature-256")
        algorithm: SignatureAlgorithm = "sha256"
        if not signature:
            signature, algorithm = lowered.get("signature"), "sha1"
        if not signature:
            raise VerificationError("missing Signature-256 header")

        now = self.now()
        chain = await self.signing_chain(url, now)
        verify_signature(chain.leaf, body, signature, algorithm=algorithm)
        self.cache.promote(url, chain)

        request_json = parse_request_body(body)
        verify_timestamp(request_json["request"].get("timestamp"), now, self.timestamp_tolerance)
        verify_application_id(request_json, self.skill_id)
        return request_json


__all__ = [
    "ALEXA_SAN",
    "CachedChain",
    "CertificateChainCache",
    "ChainDirectory",
    "DownloadsBusy",
    "RequestVerifier",
    "VerificationError",
    "cache_file_name",
    "canonical_cert_url",
    "download_chain_pem",
    "load_trusted_roots",
    "parse_pem_chain",
    "parse_request_body",
    "verify_application_id",
    "verify_chain",
    "verify_signature",
    "verify_timestamp",
]
