"""A throw-away PKI that signs Alexa-style requests, and realistic request bodies.

Everything is real cryptography (RSA 2048, SHA-256 certificates):

- ``make_pki()`` builds root CA -> intermediate CA -> leaf (SAN ``echo-api.amazon.com``) with
  knobs for the leaf's validity window and SAN, and a ``keys`` name so that a second,
  unrelated (untrusted) hierarchy can be made.
- ``sign(body, key)`` gives the base64 value of a ``Signature-256`` (or legacy ``Signature``)
  header.
- ``write_chain_cache(cache_dir, url, chain_pem)`` places a chain where
  ``RequestVerifier(certificate_cache_dir=...)`` looks before downloading.
- ``alexa_request(...)`` builds a custom-skill request envelope as Alexa sends it.
- ``chain_server(...)`` stands in for ``s3.amazonaws.com`` on a loopback port and counts the
  downloads (how many, and the most at once); ``LoopbackVerifier`` is a ``RequestVerifier``
  whose downloads go there (the URL checks and download limits stay the real ones).

RSA key generation is slow, so keys are generated once per process per name (``rsa_key``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from alexa_connector.verification import RequestVerifier, download_chain_pem

CERT_URL = "https://s3.amazonaws.com/echo.api/echo-api-cert-12.pem"
ALEXA_SAN = "echo-api.amazon.com"
SKILL_ID = "amzn1.ask.skill.0f6c4a1e-7d3b-4c55-9e0a-2b8f1d6e9c37"
USER_ID = "amzn1.ask.account.AHTESTUSERQ2ZJ7V3N5KXW4MBRPLC6YEUD"
DEVICE_ID = "amzn1.ask.device.AETESTDEVICE5J3XQ7ZK2MN4BVR6PLW"


@functools.cache
def rsa_key(name: str = "leaf") -> rsa.RSAPrivateKey:
    """An RSA-2048 private key, generated once per ``name`` for the whole test session."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass(frozen=True)
class PKI:
    """One hierarchy: ``chain_pem`` is leaf + intermediate (what Amazon's URL serves)."""

    root_cert: x509.Certificate
    root_pem: bytes
    intermediate: x509.Certificate
    leaf: x509.Certificate
    leaf_key: rsa.RSAPrivateKey
    chain_pem: bytes
    root_key: rsa.RSAPrivateKey
    intermediate_key: rsa.RSAPrivateKey

    def write_root(self, path: str | Path) -> Path:
        """Write the root as a PEM bundle (for ``trusted_roots=``); return the path."""
        path = Path(path)
        path.write_bytes(self.root_pem)
        return path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Rasa HRED test PKI"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=True,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_pki(
    *,
    keys: str = "default",
    root_name: str | None = None,
    now: datetime | None = None,
    leaf_not_before: datetime | None = None,
    leaf_not_after: datetime | None = None,
    san: tuple[str, ...] | list[str] | None = (ALEXA_SAN,),
    leaf_key: rsa.RSAPrivateKey | None = None,
) -> PKI:
    """Build root CA -> intermediate CA -> leaf.

    ``keys`` names the key set (``"default"``; another name gives an unrelated hierarchy, e.g.
    an untrusted root). The CAs are valid from ``now`` - 30 days for 10 years; the leaf from
    ``leaf_not_before`` (default ``now`` - 1 day) to ``leaf_not_after`` (default ``now`` +
    365 days). ``san`` lists the leaf's DNS names (``None``: no SAN extension at all).
    """
    now = now or datetime.now(timezone.utc)
    root_key = rsa_key(f"{keys}-root")
    intermediate_key = rsa_key(f"{keys}-intermediate")
    leaf_key = leaf_key or rsa_key(f"{keys}-leaf")
    root_subject = _name(root_name or f"Test Alexa Root CA ({keys})")
    intermediate_subject = _name(f"Test Alexa Intermediate CA ({keys})")
    ca_start, ca_end = now - timedelta(days=30), now + timedelta(days=3650)

    root_ski = x509.SubjectKeyIdentifier.from_public_key(root_key.public_key())
    root = (
        x509.CertificateBuilder()
        .subject_name(root_subject)
        .issuer_name(root_subject)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(ca_start)
        .not_valid_after(ca_end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(root_ski, critical=False)
        .sign(root_key, hashes.SHA256())
    )

    intermediate_ski = x509.SubjectKeyIdentifier.from_public_key(intermediate_key.public_key())
    intermediate = (
        x509.CertificateBuilder()
        .subject_name(intermediate_subject)
        .issuer_name(root_subject)
        .public_key(intermediate_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(ca_start)
        .not_valid_after(ca_end - timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(intermediate_ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski),
            critical=False,
        )
        .sign(root_key, hashes.SHA256())
    )

    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(ALEXA_SAN))
        .issuer_name(intermediate_subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(leaf_not_before or now - timedelta(days=1))
        .not_valid_after(leaf_not_after or now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(intermediate_ski),
            critical=False,
        )
    )
    if san is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in san]), critical=False
        )
    leaf = builder.sign(intermediate_key, hashes.SHA256())

    return PKI(
        root_cert=root,
        root_pem=_pem(root),
        intermediate=intermediate,
        leaf=leaf,
        leaf_key=leaf_key,
        chain_pem=_pem(leaf) + _pem(intermediate),
        root_key=root_key,
        intermediate_key=intermediate_key,
    )


def sign(body: bytes, key: rsa.RSAPrivateKey, algorithm: str = "sha256") -> str:
    """Base64 RSA PKCS#1 v1.5 signature of ``body`` (``"sha256"`` or legacy ``"sha1"``)."""
    digest = {"sha256": hashes.SHA256, "sha1": hashes.SHA1}[algorithm]()
    return base64.b64encode(key.sign(body, padding.PKCS1v15(), digest)).decode("ascii")


def chain_cache_path(cache_dir: str | Path, url: str) -> Path:
    """Where the verifier's cache directory keeps the chain for ``url``."""
    digest = hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()
    return Path(cache_dir) / (digest + ".pem")


def write_chain_cache(cache_dir: str | Path, url: str, chain_pem: bytes) -> Path:
    """Write ``chain_pem`` as the cached chain for ``url``; return the file's path."""
    path = chain_cache_path(cache_dir, url)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(chain_pem)
    return path


def alexa_timestamp(moment: datetime | None = None) -> str:
    """Alexa's timestamp format, ``%Y-%m-%dT%H:%M:%SZ`` (UTC)."""
    moment = (moment or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def alexa_request(
    request_type: str = "IntentRequest",
    text: str = "hello there",
    *,
    skill_id: str = SKILL_ID,
    user_id: str = USER_ID,
    timestamp: str | datetime | None = None,
    intent_name: str = "CatchAllIntent",
    slot_name: str = "text",
    session_id: str | None = None,
    new_session: bool | None = None,
    attributes: dict[str, Any] | None = None,
    device_id: str = DEVICE_ID,
    locale: str = "en-US",
    reason: str = "USER_INITIATED",
) -> dict[str, Any]:
    """A custom-skill request envelope as Alexa sends it.

    ``request_type`` is ``LaunchRequest``, ``IntentRequest`` (``text`` fills ``slot_name`` of
    ``intent_name``; ``text=None`` leaves the slot without a value, as for built-in intents) or
    ``SessionEndedRequest`` (with ``reason``). ``timestamp`` defaults to now.
    """
    if isinstance(timestamp, datetime) or timestamp is None:
        timestamp = alexa_timestamp(timestamp)
    if new_session is None:
        new_session = request_type == "LaunchRequest"
    application = {"applicationId": skill_id}
    user = {"userId": user_id}

    request: dict[str, Any] = {
        "type": request_type,
        "requestId": f"amzn1.echo-api.request.{uuid.uuid4()}",
        "timestamp": timestamp,
        "locale": locale,
    }
    if request_type == "LaunchRequest":
        request["shouldLinkResultBeReturned"] = False
    elif request_type == "IntentRequest":
        slot: dict[str, Any] = {"name": slot_name, "confirmationStatus": "NONE"}
        if text is not None:
            slot["value"] = text
            slot["source"] = "USER"
        request["intent"] = {
            "name": intent_name,
            "confirmationStatus": "NONE",
            "slots": {slot_name: slot} if slot_name else {},
        }
    elif request_type == "SessionEndedRequest":
        request["reason"] = reason
        if reason == "ERROR":
            request["error"] = {"type": "INTERNAL_SERVICE_ERROR", "message": "test error"}

    return {
        "version": "1.0",
        "session": {
            "new": new_session,
            "sessionId": session_id or f"amzn1.echo-api.session.{uuid.uuid4()}",
            "application": dict(application),
            "attributes": dict(attributes or {}),
            "user": dict(user),
        },
        "context": {
            "Viewports": [
                {
                    "type": "APL",
                    "id": "main",
                    "shape": "RECTANGLE",
                    "dpi": 213,
                    "presentationType": "STANDARD",
                    "canRotate": False,
                    "configuration": {
                        "current": {
                            "mode": "HUB",
                            "video": {"codecs": ["H_264_42", "H_264_41"]},
                            "size": {
                                "type": "DISCRETE",
                                "pixelWidth": 1280,
                                "pixelHeight": 800,
                            },
                        }
                    },
                }
            ],
            "System": {
                "application": dict(application),
                "user": dict(user),
                "device": {
                    "deviceId": device_id,
                    "supportedInterfaces": {
                        "AudioPlayer": {},
                        "Alexa.Presentation.APL": {"runtime": {"maxVersion": "2023.3"}},
                    },
                },
                "apiEndpoint": "https://api.amazonalexa.com",
                "apiAccessToken": "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.test-token.signature",
            },
        },
        "request": request,
    }


# --------------------------------------------------------------------------- certificate server


@dataclass
class ChainServer:
    """What :func:`chain_server` saw: ``base_url``, the paths requested (in order), and the
    most requests it served at once."""

    base_url: str
    paths: list[str] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0


@contextlib.asynccontextmanager
async def chain_server(
    chains: Mapping[str, bytes], *, default: bytes | None = None, delay: float = 0.0
) -> AsyncIterator[ChainServer]:
    """An HTTP server on 127.0.0.1 serving ``GET /echo.api/<name>``: ``chains[name]``, else
    ``default``, else 404, each after ``delay`` seconds (so concurrent downloads overlap)."""
    from aiohttp import web

    async def serve(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        server.paths.append(request.path)
        server.in_flight += 1
        server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            if delay:
                await asyncio.sleep(delay)
            body = chains.get(name, default)
            return web.Response(body=body) if body is not None else web.Response(status=404)
        finally:
            server.in_flight -= 1

    app = web.Application()
    app.router.add_get("/echo.api/{name}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = ChainServer(f"http://127.0.0.1:{runner.addresses[0][1]}")
    try:
        yield server
    finally:
        await runner.cleanup()


class LoopbackVerifier(RequestVerifier):
    """A real ``RequestVerifier`` whose downloads of ``https://s3.amazonaws.com/<path>`` go to
    ``base_url + <path>`` instead (a :func:`chain_server`); ``downloads`` lists the canonical
    URLs it fetched. Without ``base_url`` it downloads for real."""

    def __init__(self, *args: Any, base_url: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.base_url = base_url
        self.downloads: list[str] = []

    async def _download(self, url: str) -> bytes:
        self.downloads.append(url)
        if self.base_url is None:
            return await super()._download(url)
        return await download_chain_pem(
            self.base_url + url.removeprefix("https://s3.amazonaws.com"),
            timeout=self.download_timeout,
            max_bytes=self.max_chain_bytes,
        )
