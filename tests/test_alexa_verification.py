"""Alexa request verification with real cryptography (no mocks of the verifier).

Chains come from a throw-away PKI (tests/support/alexa_pki.py) and reach the verifier through its
certificate cache directory, or through a loopback HTTP server for the download path.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from support.alexa_pki import (
    CERT_URL,
    SKILL_ID,
    alexa_request,
    chain_cache_path,
    make_pki,
    rsa_key,
    sign,
    write_chain_cache,
)

from alexa_connector.verification import (
    CertificateChainCache,
    RequestVerifier,
    VerificationError,
    cache_file_name,
    download_chain_pem,
    load_trusted_roots,
    parse_pem_chain,
    validate_cert_url,
    verify_application_id,
    verify_chain,
    verify_signature,
    verify_timestamp,
)

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pki():
    return make_pki()


@pytest.fixture(scope="module")
def roots_file(pki, tmp_path_factory):
    return pki.write_root(tmp_path_factory.mktemp("roots") / "roots.pem")


@pytest.fixture
def cache_dir(tmp_path, pki):
    directory = tmp_path / "certs"
    write_chain_cache(directory, CERT_URL, pki.chain_pem)
    return directory


@pytest.fixture
def make_verifier(roots_file, cache_dir):
    def factory(cls=RequestVerifier, **kwargs):
        kwargs.setdefault("trusted_roots", roots_file)
        kwargs.setdefault("certificate_cache_dir", cache_dir)
        return cls(SKILL_ID, **kwargs)

    return factory


@pytest.fixture
def verifier(make_verifier):
    return make_verifier()


def encode(payload) -> bytes:
    return json.dumps(payload).encode("utf-8")


def headers_for(body: bytes, key, *, url: str = CERT_URL, legacy: bool = False) -> dict:
    if legacy:
        return {"SignatureCertChainUrl": url, "Signature": sign(body, key, "sha1")}
    return {"SignatureCertChainUrl": url, "Signature-256": sign(body, key)}


class CountingVerifier(RequestVerifier):
    """Records download attempts; downloads are served from ``self.base_url`` when set (a
    loopback server), otherwise attempted for real."""

    base_url: str | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.downloads: list[str] = []

    async def _download(self, url: str) -> bytes:
        self.downloads.append(url)
        if self.base_url is None:
            return await super()._download(url)
        return await download_chain_pem(
            self.base_url + urlsplit(url).path,
            timeout=self.download_timeout,
            max_bytes=self.max_chain_bytes,
        )


# --------------------------------------------------------------------------- accepted


@pytest.mark.parametrize("request_type", ["LaunchRequest", "IntentRequest", "SessionEndedRequest"])
async def test_accepts_correctly_signed_request(verifier, pki, request_type):
    payload = alexa_request(request_type)
    body = encode(payload)
    result = await verifier.verify(headers_for(body, pki.leaf_key), body)
    assert result == payload


async def test_accepts_legacy_sha1_signature_header(verifier, pki):
    body = encode(alexa_request())
    assert (await verifier.verify(headers_for(body, pki.leaf_key, legacy=True), body))["request"]


async def test_signature_256_is_preferred_over_legacy_signature(verifier, pki):
    body = encode(alexa_request())
    good_256 = {**headers_for(body, pki.leaf_key), "Signature": "bm90IGEgc2lnbmF0dXJl"}
    assert await verifier.verify(good_256, body)

    bad_256 = {
        **headers_for(body, pki.leaf_key, legacy=True),
        "Signature-256": sign(b"x", pki.leaf_key),
    }
    with pytest.raises(VerificationError, match="signature"):
        await verifier.verify(bad_256, body)


async def test_header_names_are_case_insensitive(verifier, pki):
    body = encode(alexa_request())
    headers = {key.lower(): value for key, value in headers_for(body, pki.leaf_key).items()}
    assert await verifier.verify(headers, body)
    upper = {key.upper(): value for key, value in headers_for(body, pki.leaf_key).items()}
    assert await verifier.verify(upper, body)


@pytest.mark.parametrize("skew_s", [-140, 140])
async def test_accepts_timestamp_within_tolerance(verifier, pki, skew_s):
    moment = datetime.now(timezone.utc) + timedelta(seconds=skew_s)
    body = encode(alexa_request(timestamp=moment))
    assert await verifier.verify(headers_for(body, pki.leaf_key), body)


async def test_application_id_falls_back_to_session(verifier, pki):
    payload = alexa_request()
    del payload["context"]
    body = encode(payload)
    assert await verifier.verify(headers_for(body, pki.leaf_key), body)


def test_request_envelope_is_a_valid_alexa_model():
    serialize = pytest.importorskip("ask_sdk_core.serialize")
    from ask_sdk_model import IntentRequest, RequestEnvelope

    envelope = serialize.DefaultSerializer().deserialize(
        json.dumps(alexa_request("IntentRequest", "tell me a joke")), RequestEnvelope
    )
    assert isinstance(envelope.request, IntentRequest)
    assert envelope.request.intent.slots["text"].value == "tell me a joke"
    assert envelope.context.system.application.application_id == SKILL_ID


# --------------------------------------------------------------------------- certificate URL

ACCEPTED_URLS = [
    CERT_URL,
    "HTTPS://s3.AmazonAWS.com/echo.api/x.pem",
    "https://s3.amazonaws.com:443/echo.api/echo-api-cert.pem",
    "https://s3.amazonaws.com/echo.api/../echo.api/echo-api-cert.pem",
    "https://s3.amazonaws.com/echo.api/./sub/../echo-api-cert.pem",
]

REJECTED_URLS = [
    "http://s3.amazonaws.com/echo.api/echo-api-cert.pem",
    "ftp://s3.amazonaws.com/echo.api/echo-api-cert.pem",
    "https://notamazon.com/echo.api/echo-api-cert.pem",
    "https://s3.amazonaws.com.evil.com/echo.api/echo-api-cert.pem",
    "https://evil.com/s3.amazonaws.com/echo.api/echo-api-cert.pem",
    "https://s3.amazonaws.com@evil.com/echo.api/echo-api-cert.pem",
    "https://user@s3.amazonaws.com/echo.api/echo-api-cert.pem",
    "https://s3.amazonaws.com/EcHo.aPi/echo-api-cert.pem",
    "https://s3.amazonaws.com/ECHO.API/echo-api-cert.pem",
    "https://s3.amazonaws.com/invalid.pem",
    "https://s3.amazonaws.com/echo.api",
    "https://s3.amazonaws.com/echo.api/../invalid.pem",
    "https://s3.amazonaws.com/echo.api/%2E%2E/invalid.pem",
    "https://s3.amazonaws.com:8443/echo.api/echo-api-cert.pem",
    "https://s3.amazonaws.com:80/echo.api/echo-api-cert.pem",
    "https://s3.amazonaws.com:notaport/echo.api/echo-api-cert.pem",
    "s3.amazonaws.com/echo.api/echo-api-cert.pem",
    "",
]


@pytest.mark.parametrize("url", ACCEPTED_URLS)
def test_cert_url_accepted(url):
    validate_cert_url(url)


@pytest.mark.parametrize("url", REJECTED_URLS)
def test_cert_url_rejected(url):
    with pytest.raises(VerificationError):
        validate_cert_url(url)


@pytest.mark.parametrize("url", [u for u in REJECTED_URLS if u])
async def test_verify_rejects_bad_cert_url_even_with_a_cached_chain(make_verifier, pki, url):
    verifier = make_verifier(cls=CountingVerifier)
    write_chain_cache(verifier.cache.cache_dir, url, pki.chain_pem)
    body = encode(alexa_request())
    with pytest.raises(VerificationError, match="URL"):
        await verifier.verify(headers_for(body, pki.leaf_key, url=url), body)
    assert verifier.downloads == []


async def test_verify_accepts_url_variant_cached_under_its_exact_string(make_verifier, pki):
    url = "HTTPS://s3.AmazonAWS.com:443/echo.api/x.pem"
    verifier = make_verifier()
    write_chain_cache(verifier.cache.cache_dir, url, pki.chain_pem)
    body = encode(alexa_request())
    assert await verifier.verify(headers_for(body, pki.leaf_key, url=url), body)


# --------------------------------------------------------------------------- certificate chain

NOW = datetime.now(timezone.utc)

BAD_CHAINS = {
    "expired": (
        {"leaf_not_before": NOW - timedelta(days=30), "leaf_not_after": NOW - timedelta(days=1)},
        "expired",
    ),
    "not-yet-valid": (
        {"leaf_not_before": NOW + timedelta(days=1), "leaf_not_after": NOW + timedelta(days=30)},
        "not yet valid",
    ),
    "wrong-san": ({"san": ("api.amazon.com", "echo-api.amazon.com.evil.com")}, "SAN"),
    "wildcard-san": ({"san": ("*.amazon.com",)}, "SAN"),
    "no-san": ({"san": None}, "subject alternative names"),
    "untrusted-root": ({"keys": "untrusted", "root_name": "Evil Root CA"}, "not trusted"),
}


@pytest.mark.parametrize("case", list(BAD_CHAINS))
async def test_rejects_bad_certificate_chain(make_verifier, cache_dir, case):
    overrides, reason = BAD_CHAINS[case]
    bad = make_pki(**overrides)
    write_chain_cache(cache_dir, CERT_URL, bad.chain_pem)
    verifier = make_verifier()
    body = encode(alexa_request())
    with pytest.raises(VerificationError, match=reason):
        await verifier.verify(headers_for(body, bad.leaf_key), body)
    assert CERT_URL not in verifier.cache


def test_verify_chain_returns_the_leaf(pki):
    chain = parse_pem_chain(pki.chain_pem)
    assert verify_chain(chain, [pki.root_cert], datetime.now(timezone.utc)) == pki.leaf


def test_verify_chain_needs_the_intermediate(pki):
    with pytest.raises(VerificationError, match="not trusted"):
        verify_chain([pki.leaf], [pki.root_cert], datetime.now(timezone.utc))


def test_verify_chain_rejects_chain_at_a_time_outside_its_validity(pki):
    chain = parse_pem_chain(pki.chain_pem)
    with pytest.raises(VerificationError, match="expired"):
        verify_chain(chain, [pki.root_cert], datetime.now(timezone.utc) + timedelta(days=400))
    with pytest.raises(VerificationError, match="not yet valid"):
        verify_chain(chain, [pki.root_cert], datetime.now(timezone.utc) - timedelta(days=2))


# --------------------------------------------------------------------------- signature


async def test_rejects_tampered_body(verifier, pki):
    body = encode(alexa_request(text="hello there"))
    headers = headers_for(body, pki.leaf_key)
    tampered = body.replace(b"hello there", b"hello THERE")
    with pytest.raises(VerificationError, match="signature"):
        await verifier.verify(headers, tampered)


async def test_rejects_signature_by_another_key(verifier):
    body = encode(alexa_request())
    with pytest.raises(VerificationError, match="signature"):
        await verifier.verify(headers_for(body, rsa_key("attacker")), body)


@pytest.mark.parametrize("legacy", [False, True])
async def test_rejects_signature_with_the_wrong_hash(verifier, pki, legacy):
    body = encode(alexa_request())
    header = "Signature" if legacy else "Signature-256"
    algorithm = "sha256" if legacy else "sha1"  # the other one
    headers = {"SignatureCertChainUrl": CERT_URL, header: sign(body, pki.leaf_key, algorithm)}
    with pytest.raises(VerificationError, match="signature"):
        await verifier.verify(headers, body)


@pytest.mark.parametrize(
    "signature_headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"Signature-256": ""}, id="empty"),
        pytest.param({"Signature-256": "not base64!*"}, id="not-base64"),
        pytest.param({"Signature": "@@@@"}, id="legacy-not-base64"),
        pytest.param({"Signature-256": "aGVsbG8"}, id="bad-padding"),
    ],
)
async def test_rejects_missing_or_malformed_signature(verifier, signature_headers):
    body = encode(alexa_request())
    with pytest.raises(VerificationError, match=r"signature|Signature"):
        await verifier.verify({"SignatureCertChainUrl": CERT_URL, **signature_headers}, body)


async def test_rejects_missing_cert_url_header(verifier, pki):
    body = encode(alexa_request())
    with pytest.raises(VerificationError, match="SignatureCertChainUrl"):
        await verifier.verify({"Signature-256": sign(body, pki.leaf_key)}, body)


def test_verify_signature_directly(pki):
    body = b'{"request": {}}'
    verify_signature(pki.leaf, body, sign(body, pki.leaf_key))
    verify_signature(pki.leaf, body, sign(body, pki.leaf_key, "sha1"), algorithm="sha1")
    with pytest.raises(VerificationError):
        verify_signature(pki.leaf, body, None)
    with pytest.raises(VerificationError):
        verify_signature(pki.leaf, body + b" ", sign(body, pki.leaf_key))


# --------------------------------------------------------------------------- body, time, id


@pytest.mark.parametrize("skew_s", [-151, -3600, 151, 3600])
async def test_rejects_stale_or_future_timestamp(verifier, pki, skew_s):
    moment = datetime.now(timezone.utc) + timedelta(seconds=skew_s)
    body = encode(alexa_request(timestamp=moment))
    reason = "stale" if skew_s < 0 else "future"
    with pytest.raises(VerificationError, match=reason):
        await verifier.verify(headers_for(body, pki.leaf_key), body)


@pytest.mark.parametrize("timestamp", ["", "yesterday", "2026-13-45T99:00:00Z", 1234567890])
async def test_rejects_missing_or_malformed_timestamp(verifier, pki, timestamp):
    payload = alexa_request()
    payload["request"]["timestamp"] = timestamp
    body = encode(payload)
    with pytest.raises(VerificationError, match="timestamp"):
        await verifier.verify(headers_for(body, pki.leaf_key), body)


def test_verify_timestamp_directly():
    now = datetime(2026, 11, 25, 10, 0, 0, tzinfo=timezone.utc)
    verify_timestamp("2026-11-25T10:00:00Z", now)
    verify_timestamp("2026-11-25T10:02:30Z", now)
    verify_timestamp("2026-11-25T09:57:30.000Z", now)
    with pytest.raises(VerificationError):
        verify_timestamp("2026-11-25T10:02:31Z", now)
    with pytest.raises(VerificationError):
        verify_timestamp("2026-11-25T10:00:11Z", now, tolerance_s=10)


def test_timestamp_tolerance_above_150_s_is_a_configuration_error(roots_file):
    now = datetime.now(timezone.utc)
    with pytest.raises(ValueError):
        verify_timestamp("2026-11-25T10:00:00Z", now, tolerance_s=151)
    with pytest.raises(ValueError):
        RequestVerifier(SKILL_ID, trusted_roots=roots_file, timestamp_tolerance=300)
    assert RequestVerifier(SKILL_ID, trusted_roots=roots_file, timestamp_tolerance=60)


@pytest.mark.parametrize("where", ["both", "context-only"])
async def test_rejects_wrong_application_id(verifier, pki, where):
    payload = alexa_request(skill_id="amzn1.ask.skill.someone-else")
    if where == "context-only":
        payload["session"]["application"]["applicationId"] = SKILL_ID
    body = encode(payload)
    with pytest.raises(VerificationError, match="application id"):
        await verifier.verify(headers_for(body, pki.leaf_key), body)


def test_verify_application_id_directly():
    verify_application_id(alexa_request(), SKILL_ID)
    with pytest.raises(VerificationError, match="missing"):
        verify_application_id({"request": {}}, SKILL_ID)
    with pytest.raises(VerificationError, match="does not match"):
        verify_application_id(alexa_request(skill_id="other"), SKILL_ID)


@pytest.mark.parametrize(
    "body, reason",
    [
        pytest.param(b"this is not json", "not JSON", id="not-json"),
        pytest.param(b"\xff\xfe\x00garbage", "not JSON", id="not-utf8"),
        pytest.param(b"[1, 2, 3]", "not a JSON object", id="array"),
        pytest.param(b'{"version": "1.0", "session": {}}', "no request", id="no-request"),
        pytest.param(b'{"request": "LaunchRequest"}', "no request", id="request-not-object"),
    ],
)
async def test_rejects_bad_body(verifier, pki, body, reason):
    with pytest.raises(VerificationError, match=reason):
        await verifier.verify(headers_for(body, pki.leaf_key), body)


async def test_only_verification_errors_escape(verifier, pki):
    with pytest.raises(VerificationError):
        await verifier.verify({"SignatureCertChainUrl": CERT_URL}, "not bytes")  # type: ignore[arg-type]
    with pytest.raises(VerificationError):
        await verifier.verify({"SignatureCertChainUrl": 42, "Signature-256": "AAAA"}, b"{}")


# --------------------------------------------------------------------------- chain cache


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"garbage, not a certificate", id="garbage"),
        pytest.param(
            b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
            id="garbage-pem",
        ),
    ],
)
async def test_rejects_garbage_pem_in_cache_dir(make_verifier, cache_dir, pki, content):
    chain_cache_path(cache_dir, CERT_URL).write_bytes(content)
    verifier = make_verifier(cls=CountingVerifier)
    body = encode(alexa_request())
    with pytest.raises(VerificationError, match="certificate chain"):
        await verifier.verify(headers_for(body, pki.leaf_key), body)
    assert verifier.downloads == []


async def test_cache_dir_is_read_before_any_download(make_verifier, cache_dir, pki):
    assert chain_cache_path(cache_dir, CERT_URL).name == cache_file_name(CERT_URL)
    verifier = make_verifier(cls=CountingVerifier)
    for _ in range(3):
        body = encode(alexa_request())
        assert await verifier.verify(headers_for(body, pki.leaf_key), body)
    assert verifier.downloads == []
    assert verifier.cache.urls() == [CERT_URL]


async def test_uncached_url_with_failing_download_is_a_verification_error(make_verifier, pki):
    url = "https://s3.amazonaws.com/echo.api/rasa-hred-test-no-such-cert.pem"
    verifier = make_verifier(cls=CountingVerifier, download_timeout=2.0)
    body = encode(alexa_request())
    with pytest.raises(VerificationError, match=r"download|not trusted"):
        # No network here: the download fails or times out; either way it is bounded.
        await asyncio.wait_for(verifier.verify(headers_for(body, pki.leaf_key, url=url), body), 15)
    assert verifier.downloads == [url]
    assert not chain_cache_path(verifier.cache.cache_dir, url).exists()


async def test_memory_cache_is_a_bounded_lru(make_verifier, cache_dir, pki):
    urls = [f"https://s3.amazonaws.com/echo.api/cert-{i}.pem" for i in range(3)]
    for url in urls:
        write_chain_cache(cache_dir, url, pki.chain_pem)
    verifier = make_verifier(memory_cache_size=2)
    for url in [*urls, urls[1]]:
        body = encode(alexa_request())
        assert await verifier.verify(headers_for(body, pki.leaf_key, url=url), body)
    assert len(verifier.cache) == 2
    assert verifier.cache.urls() == [urls[2], urls[1]]


def test_chain_cache_rejects_zero_size():
    with pytest.raises(ValueError):
        CertificateChainCache(None, max_entries=0)


async def test_memoised_chain_is_rechecked_against_the_clock(roots_file, tmp_path):
    start = datetime.now(timezone.utc)
    short_lived = make_pki(now=start, leaf_not_after=start + timedelta(hours=1))
    write_chain_cache(tmp_path, CERT_URL, short_lived.chain_pem)
    clock = {"now": start}
    verifier = RequestVerifier(
        SKILL_ID,
        trusted_roots=roots_file,
        certificate_cache_dir=tmp_path,
        clock=lambda: clock["now"],
    )
    body = encode(alexa_request(timestamp=start))
    assert await verifier.verify(headers_for(body, short_lived.leaf_key), body)
    assert CERT_URL in verifier.cache

    clock["now"] = start + timedelta(hours=2)
    body = encode(alexa_request(timestamp=clock["now"]))
    with pytest.raises(VerificationError, match="expired"):
        await verifier.verify(headers_for(body, short_lived.leaf_key), body)
    assert CERT_URL not in verifier.cache


async def test_cached_file_is_validated_by_every_new_verifier(make_verifier, cache_dir, pki):
    body = encode(alexa_request())
    assert await make_verifier().verify(headers_for(body, pki.leaf_key), body)
    evil = make_pki(keys="untrusted")
    write_chain_cache(cache_dir, CERT_URL, evil.chain_pem)
    body = encode(alexa_request())
    with pytest.raises(VerificationError, match="not trusted"):
        await make_verifier().verify(headers_for(body, evil.leaf_key), body)


# --------------------------------------------------------------------------- download path


@pytest.fixture
async def chain_server(pki):
    untrusted = make_pki(keys="untrusted")

    async def slow(_request):
        await asyncio.sleep(5)
        return web.Response(body=pki.chain_pem)

    async def huge_chunked(request):
        response = web.StreamResponse()
        response.enable_chunked_encoding()  # no Content-Length: the limit applies while reading
        await response.prepare(request)
        for _ in range(40):
            await response.write(pki.chain_pem)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/echo.api/huge-chunked.pem", huge_chunked)
    app.router.add_get("/echo.api/good.pem", lambda _r: web.Response(body=pki.chain_pem))
    app.router.add_get("/echo.api/untrusted.pem", lambda _r: web.Response(body=untrusted.chain_pem))
    app.router.add_get("/echo.api/huge.pem", lambda _r: web.Response(body=pki.chain_pem * 40))
    app.router.add_get("/echo.api/slow.pem", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_downloaded_chain_is_validated_then_cached(make_verifier, pki, chain_server):
    url = "https://s3.amazonaws.com/echo.api/good.pem"
    verifier = make_verifier(cls=CountingVerifier)
    verifier.base_url = chain_server
    for _ in range(2):
        body = encode(alexa_request())
        assert await verifier.verify(headers_for(body, pki.leaf_key, url=url), body)
    assert verifier.downloads == [url]
    cached = chain_cache_path(verifier.cache.cache_dir, url)
    assert cached.read_bytes() == pki.chain_pem

    fresh = make_verifier(cls=CountingVerifier)
    body = encode(alexa_request())
    assert await fresh.verify(headers_for(body, pki.leaf_key, url=url), body)
    assert fresh.downloads == []


@pytest.mark.parametrize(
    "name, reason",
    [
        ("untrusted.pem", "not trusted"),
        ("huge.pem", "too large"),
        ("huge-chunked.pem", "too large"),
        ("missing.pem", "HTTP 404"),
        ("slow.pem", "timed out"),
    ],
)
async def test_failed_download_is_not_cached(make_verifier, pki, chain_server, name, reason):
    url = f"https://s3.amazonaws.com/echo.api/{name}"
    verifier = make_verifier(cls=CountingVerifier, download_timeout=0.5, max_chain_bytes=16_000)
    verifier.base_url = chain_server
    body = encode(alexa_request())
    with pytest.raises(VerificationError, match=reason):
        await verifier.verify(headers_for(body, pki.leaf_key, url=url), body)
    assert not chain_cache_path(verifier.cache.cache_dir, url).exists()
    assert url not in verifier.cache


# --------------------------------------------------------------------------- roots and PEM


def test_load_trusted_roots_skips_unloadable_certificates(tmp_path, pki):
    other = make_pki(keys="untrusted")
    garbage = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(pki.root_pem + garbage + b"# comment\n" + other.root_pem)
    assert load_trusted_roots(bundle) == [pki.root_cert, other.root_cert]


@pytest.mark.parametrize("content", [b"", b"no certificates here"])
def test_load_trusted_roots_rejects_an_empty_bundle(tmp_path, content):
    bundle = tmp_path / "empty.pem"
    bundle.write_bytes(content)
    with pytest.raises(ValueError):
        load_trusted_roots(bundle)
    with pytest.raises(ValueError):
        load_trusted_roots(tmp_path / "does-not-exist.pem")


def test_load_trusted_roots_defaults_to_certifi():
    assert len(load_trusted_roots(None)) > 50


@pytest.mark.parametrize(
    "data", [b"", b"junk", b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----"]
)
def test_parse_pem_chain_rejects_garbage(data):
    with pytest.raises(VerificationError):
        parse_pem_chain(data)


def test_parse_pem_chain_keeps_order(pki):
    assert parse_pem_chain(pki.chain_pem) == [pki.leaf, pki.intermediate]


async def test_concurrent_requests_share_one_download(make_verifier, pki, chain_server):
    url = "https://s3.amazonaws.com/echo.api/good.pem"
    verifier = make_verifier(cls=CountingVerifier)
    verifier.base_url = chain_server
    bodies = [encode(alexa_request(text=f"message {i}")) for i in range(5)]
    results = await asyncio.gather(
        *(verifier.verify(headers_for(body, pki.leaf_key, url=url), body) for body in bodies)
    )
    assert [r["request"]["intent"]["slots"]["text"]["value"] for r in results] == [
        f"message {i}" for i in range(5)
    ]
    assert verifier.downloads == [url]
