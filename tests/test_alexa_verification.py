"""Alexa request verification with real cryptography (no mocks of the verifier).

Chains come from a throw-away PKI (tests/support/alexa_pki.py) and reach the verifier through its
certificate cache directory, or through a loopback HTTP server for the download path. The last
part floods the verifier with unsigned requests, as an attacker would, and checks what that
costs: downloads, files, downloads at once, and the genuine chain's place in the cache.
"""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import datetime, timedelta, timezone

import pytest
from aiohttp import web
from support.alexa_pki import (
    CERT_URL,
    SKILL_ID,
    LoopbackVerifier,
    alexa_request,
    chain_cache_path,
    chain_server,
    make_pki,
    rsa_key,
    sign,
    write_chain_cache,
)

from alexa_connector.verification import (
    FAILURE_TTL_S,
    MAX_CONCURRENT_DOWNLOADS,
    CertificateChainCache,
    DownloadsBusy,
    RequestVerifier,
    VerificationError,
    cache_file_name,
    canonical_cert_url,
    load_trusted_roots,
    parse_pem_chain,
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


#: A well-formed signature that no key made (what a flood sends).
GARBAGE_SIGNATURE = base64.b64encode(b"\x00" * 256).decode()


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

ACCEPTED_URLS = {
    CERT_URL: CERT_URL,
    "HTTPS://s3.AmazonAWS.com/echo.api/echo-api-cert-4.pem": (
        "https://s3.amazonaws.com/echo.api/echo-api-cert-4.pem"
    ),
    "https://s3.amazonaws.com:443/echo.api/echo-api-cert.pem": (
        "https://s3.amazonaws.com/echo.api/echo-api-cert.pem"
    ),
    "https://s3.amazonaws.com/echo.api/../echo.api/echo-api-cert.pem": (
        "https://s3.amazonaws.com/echo.api/echo-api-cert.pem"
    ),
    "https://s3.amazonaws.com/echo.api/./sub/../echo-api-cert-12.pem": CERT_URL,
    "https://s3.amazonaws.com/echo.api//echo-api-cert-6-ats.pem": (
        "https://s3.amazonaws.com/echo.api/echo-api-cert-6-ats.pem"
    ),
    f"{CERT_URL}/": CERT_URL,
    f"  {CERT_URL}  ": CERT_URL,
}

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
    "https://s3.amazonaws.com/echo.api/",
    "https://s3.amazonaws.com/echo.api/../invalid.pem",
    "https://s3.amazonaws.com/echo.api/%2E%2E/invalid.pem",
    "https://s3.amazonaws.com:8443/echo.api/echo-api-cert.pem",
    "https://s3.amazonaws.com:80/echo.api/echo-api-cert.pem",
    "https://s3.amazonaws.com:notaport/echo.api/echo-api-cert.pem",
    "s3.amazonaws.com/echo.api/echo-api-cert.pem",
    "",
    # Not the canonical form: a query or fragment, percent-encoding, another file name.
    f"{CERT_URL}?v=1",
    f"{CERT_URL}?",
    f"{CERT_URL}#part",
    "https://s3.amazonaws.com/echo.api/echo-api-cert-%31%32.pem",
    "https://s3.amazonaws.com/echo.api/x.pem",
    "https://s3.amazonaws.com/echo.api/echo-api-cert-12.PEM",
    "https://s3.amazonaws.com/echo.api/Echo-Api-Cert-12.pem",
    "https://s3.amazonaws.com/echo.api/echo-api-cert-12.pem.gz",
    "https://s3.amazonaws.com/echo.api/echo-api-cert-.pem",
    "https://s3.amazonaws.com/echo.api/echo-api-cert-1-2-3-4.pem",
    "https://s3.amazonaws.com/echo.api/echo-api-cert-" + "9" * 17 + ".pem",
    "https://s3.amazonaws.com/echo.api/sub/echo-api-cert-12.pem",
    # Oversized, or characters a URL does not have.
    "https://s3.amazonaws.com/echo.api/" + "a/.." * 60 + "echo-api-cert-12.pem",
    "https://s3.amazonaws.com/echo.api/echo-api-cert 12.pem",
    "https://s3.amazonaws.com/echo.api/echo-api-cert-12\n.pem",
    "https://s3.amazonaws.com/echo.api/echo-api-cert-1\t2.pem",
    "https://s3.amazonaws.com/echo.api/echo-api-cert-\u0661\u0662.pem",
    "https://s3.amazonaws.com/echo.api/echo-api-cert-12.pem\udcff",
]


@pytest.mark.parametrize(("url", "canonical"), list(ACCEPTED_URLS.items()))
def test_cert_url_accepted_in_canonical_form(url, canonical):
    assert canonical_cert_url(url) == canonical


@pytest.mark.parametrize("url", REJECTED_URLS)
def test_cert_url_rejected(url):
    with pytest.raises(VerificationError, match="URL"):
        canonical_cert_url(url)


@pytest.mark.parametrize("url", [u for u in REJECTED_URLS if u.strip()])
async def test_verify_rejects_bad_cert_url_even_with_a_cached_chain(make_verifier, pki, url):
    verifier = make_verifier(cls=LoopbackVerifier)
    write_chain_cache(verifier.cache.cache_dir, url, pki.chain_pem)
    body = encode(alexa_request())
    with pytest.raises(VerificationError, match="URL"):
        await verifier.verify(headers_for(body, pki.leaf_key, url=url), body)
    assert verifier.downloads == []


async def test_url_variants_share_the_canonical_cache_entry(make_verifier, pki, cache_dir):
    verifier = make_verifier(cls=LoopbackVerifier)
    for url in ACCEPTED_URLS:
        if ACCEPTED_URLS[url] != CERT_URL:
            continue
        body = encode(alexa_request())
        assert await verifier.verify(headers_for(body, pki.leaf_key, url=url), body)
    assert verifier.downloads == []
    assert verifier.cache.urls() == [CERT_URL]
    assert [path.name for path in verifier.cache.directory.files()] == [cache_file_name(CERT_URL)]


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
    verifier = make_verifier(cls=LoopbackVerifier)
    body = encode(alexa_request())
    with pytest.raises(VerificationError, match="certificate chain"):
        await verifier.verify(headers_for(body, pki.leaf_key), body)
    assert verifier.downloads == []


async def test_cache_dir_is_read_before_any_download(make_verifier, cache_dir, pki):
    assert chain_cache_path(cache_dir, CERT_URL).name == cache_file_name(CERT_URL)
    verifier = make_verifier(cls=LoopbackVerifier)
    for _ in range(3):
        body = encode(alexa_request())
        assert await verifier.verify(headers_for(body, pki.leaf_key), body)
    assert verifier.downloads == []
    assert verifier.cache.urls() == [CERT_URL]


async def test_uncached_url_with_failing_download_is_a_verification_error(make_verifier, pki):
    url = "https://s3.amazonaws.com/echo.api/echo-api-cert-rasahredtest.pem"
    verifier = make_verifier(cls=LoopbackVerifier, download_timeout=2.0)
    body = encode(alexa_request())
    with pytest.raises(VerificationError, match=r"download|not trusted"):
        # No network here: the download fails or times out; either way it is bounded.
        await asyncio.wait_for(verifier.verify(headers_for(body, pki.leaf_key, url=url), body), 15)
    assert verifier.downloads == [url]
    assert not chain_cache_path(verifier.cache.cache_dir, url).exists()


async def test_memory_cache_is_a_bounded_lru(make_verifier, cache_dir, pki):
    urls = [f"https://s3.amazonaws.com/echo.api/echo-api-cert-{i}.pem" for i in range(3)]
    for url in urls:
        write_chain_cache(cache_dir, url, pki.chain_pem)
    verifier = make_verifier(memory_cache_size=2)
    for url in [*urls, urls[1]]:
        body = encode(alexa_request())
        assert await verifier.verify(headers_for(body, pki.leaf_key, url=url), body)
    assert len(verifier.cache) == 2
    assert verifier.cache.urls() == [urls[2], urls[1]]


@pytest.mark.parametrize(
    "limits",
    [
        {"max_entries": 0},
        {"max_pending": 0},
        {"max_files": 0},
        {"max_bytes": 1000, "max_file_bytes": 2000},
    ],
)
def test_chain_cache_rejects_impossible_limits(tmp_path, limits):
    with pytest.raises(ValueError):
        CertificateChainCache(tmp_path, **limits)


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

GOOD_URL = "https://s3.amazonaws.com/echo.api/echo-api-cert-good.pem"


def url_of(name: str) -> str:
    return f"https://s3.amazonaws.com/echo.api/echo-api-cert-{name}.pem"


@pytest.fixture
async def special_server(pki):
    """A loopback stand-in for s3.amazonaws.com with a good chain and broken ones."""
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
    for name, handler in {
        "hugechunked": huge_chunked,
        "good": lambda _r: web.Response(body=pki.chain_pem),
        "untrusted": lambda _r: web.Response(body=untrusted.chain_pem),
        "huge": lambda _r: web.Response(body=pki.chain_pem * 40),
        "slow": slow,
    }.items():
        app.router.add_get(f"/echo.api/echo-api-cert-{name}.pem", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_downloaded_chain_is_validated_then_cached(make_verifier, pki, special_server):
    verifier = make_verifier(cls=LoopbackVerifier, base_url=special_server)
    for _ in range(2):
        body = encode(alexa_request())
        assert await verifier.verify(headers_for(body, pki.leaf_key, url=GOOD_URL), body)
    assert verifier.downloads == [GOOD_URL]
    cached = chain_cache_path(verifier.cache.cache_dir, GOOD_URL)
    assert cached.read_bytes() == pki.chain_pem

    fresh = make_verifier(cls=LoopbackVerifier)
    body = encode(alexa_request())
    assert await fresh.verify(headers_for(body, pki.leaf_key, url=GOOD_URL), body)
    assert fresh.downloads == []


FAILED_DOWNLOADS = [
    ("untrusted", "not trusted"),
    ("huge", "too large"),
    ("hugechunked", "too large"),
    ("missing", "HTTP 404"),
    ("slow", "timed out"),
]


@pytest.mark.parametrize(("name", "reason"), FAILED_DOWNLOADS)
async def test_failed_download_is_not_cached(make_verifier, pki, special_server, name, reason):
    url = url_of(name)
    verifier = make_verifier(
        cls=LoopbackVerifier, base_url=special_server, download_timeout=0.5, max_chain_bytes=16_000
    )
    body = encode(alexa_request())
    with pytest.raises(VerificationError, match=reason):
        await verifier.verify(headers_for(body, pki.leaf_key, url=url), body)
    assert not chain_cache_path(verifier.cache.cache_dir, url).exists()
    assert url not in verifier.cache
    assert url not in verifier.cache.pending


@pytest.mark.parametrize(("name", "reason"), FAILED_DOWNLOADS)
async def test_a_failed_url_is_not_downloaded_again_within_the_failure_ttl(
    make_verifier, pki, special_server, name, reason
):
    clock = {"now": datetime.now(timezone.utc)}
    verifier = make_verifier(
        cls=LoopbackVerifier,
        base_url=special_server,
        download_timeout=0.5,
        max_chain_bytes=16_000,
        clock=lambda: clock["now"],
    )
    url = url_of(name)

    async def attempt() -> str:
        body = encode(alexa_request(timestamp=clock["now"]))
        with pytest.raises(VerificationError, match=reason) as caught:
            await verifier.verify(headers_for(body, pki.leaf_key, url=url), body)
        return caught.value.reason

    await attempt()
    for seconds in (0, 1, FAILURE_TTL_S - 2):
        clock["now"] += timedelta(seconds=seconds)
        assert "not retried" in await attempt()
    assert verifier.downloads == [url]

    clock["now"] += timedelta(seconds=1.5)  # the window is over: one new download
    assert "not retried" not in await attempt()
    assert verifier.downloads == [url, url]


async def test_a_clock_set_back_does_not_stretch_the_failure_ttl(
    make_verifier, pki, special_server
):
    clock = {"now": datetime.now(timezone.utc)}
    verifier = make_verifier(
        cls=LoopbackVerifier, base_url=special_server, clock=lambda: clock["now"]
    )
    body = encode(alexa_request())
    for _ in range(2):
        with pytest.raises(VerificationError, match="HTTP 404"):
            await verifier.verify(headers_for(body, pki.leaf_key, url=url_of("missing")), body)
        clock["now"] -= timedelta(hours=1)
    assert verifier.downloads == [url_of("missing")] * 2


async def test_failure_ttl_zero_retries_every_time(make_verifier, pki, special_server):
    verifier = make_verifier(cls=LoopbackVerifier, base_url=special_server, failure_ttl=0)
    for _ in range(2):
        body = encode(alexa_request())
        with pytest.raises(VerificationError, match="HTTP 404"):
            await verifier.verify(headers_for(body, pki.leaf_key, url=url_of("missing")), body)
    assert verifier.downloads == [url_of("missing")] * 2


async def test_busy_download_slots_answer_503_and_are_not_remembered_as_failures(
    make_verifier, pki
):
    async with chain_server({}, default=pki.chain_pem, delay=0.5) as server:
        verifier = make_verifier(
            cls=LoopbackVerifier, base_url=server.base_url, max_concurrent_downloads=1
        )
        body = encode(alexa_request())
        first = asyncio.ensure_future(
            verifier.verify(headers_for(body, pki.leaf_key, url=url_of("first")), body)
        )
        while verifier.downloads_in_flight == 0:
            await asyncio.sleep(0.01)
        with pytest.raises(DownloadsBusy, match="too many") as caught:
            await verifier.verify(headers_for(body, pki.leaf_key, url=GOOD_URL), body)
        assert caught.value.status == 503
        assert await asyncio.wait_for(first, 15)
        assert await verifier.verify(headers_for(body, pki.leaf_key, url=GOOD_URL), body)
        assert verifier.downloads == [url_of("first"), GOOD_URL]
        assert server.max_in_flight == 1


async def test_a_forged_signature_does_not_make_a_chain_proven(make_verifier, pki, special_server):
    verifier = make_verifier(cls=LoopbackVerifier, base_url=special_server)
    body = encode(alexa_request())
    forged = {"SignatureCertChainUrl": GOOD_URL, "Signature-256": GARBAGE_SIGNATURE}
    for _ in range(3):
        with pytest.raises(VerificationError, match="signature"):
            await verifier.verify(forged, body)
    # Validated, so kept (no new download per forged request) but apart from proven chains,
    # and not written to the cache directory.
    assert verifier.downloads == [GOOD_URL]
    assert GOOD_URL in verifier.cache.pending
    assert GOOD_URL not in verifier.cache
    assert not chain_cache_path(verifier.cache.cache_dir, GOOD_URL).exists()

    assert await verifier.verify(headers_for(body, pki.leaf_key, url=GOOD_URL), body)
    assert GOOD_URL in verifier.cache
    assert GOOD_URL not in verifier.cache.pending
    assert chain_cache_path(verifier.cache.cache_dir, GOOD_URL).exists()
    assert verifier.downloads == [GOOD_URL]


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


async def test_concurrent_requests_share_one_download(make_verifier, pki, special_server):
    url = GOOD_URL
    verifier = make_verifier(cls=LoopbackVerifier, base_url=special_server)
    bodies = [encode(alexa_request(text=f"message {i}")) for i in range(5)]
    results = await asyncio.gather(
        *(verifier.verify(headers_for(body, pki.leaf_key, url=url), body) for body in bodies)
    )
    assert [r["request"]["intent"]["slots"]["text"]["value"] for r in results] == [
        f"message {i}" for i in range(5)
    ]
    assert verifier.downloads == [url]


# --------------------------------------------------------------------------- hostile floods

FLOOD = 500


async def test_query_string_flood_downloads_nothing_and_writes_nothing(make_verifier, pki):
    """The issue's flood: before, 500 downloads and 500 files, all answered 400."""
    verifier = make_verifier(cls=LoopbackVerifier)
    body = encode(alexa_request())
    files_before = sorted(verifier.cache.cache_dir.iterdir())
    for n in range(FLOOD):
        headers = {"SignatureCertChainUrl": f"{CERT_URL}?v={n}", "Signature-256": GARBAGE_SIGNATURE}
        with pytest.raises(VerificationError, match="query"):
            await verifier.verify(headers, body)
    assert verifier.downloads == []
    assert sorted(verifier.cache.cache_dir.iterdir()) == files_before


@pytest.mark.parametrize("with_cache_dir", [True, False])
async def test_flood_of_distinct_urls_is_bounded_and_the_genuine_chain_survives(
    make_verifier, pki, with_cache_dir
):
    """500 concurrent forged requests, each naming another chain URL of Amazon's form, all
    served (the worst case: the genuine chain, so every download validates)."""
    limits = {"memory_cache_size": 2, "pending_cache_size": 2, "cache_dir_max_files": 3}
    if not with_cache_dir:
        limits["certificate_cache_dir"] = None
    async with chain_server({}, default=pki.chain_pem, delay=0.05) as server:
        verifier = make_verifier(cls=LoopbackVerifier, base_url=server.base_url, **limits)
        cache_dir = verifier.cache.cache_dir
        genuine = encode(alexa_request())
        if not with_cache_dir:
            genuine_url = url_of("genuine")
            assert await verifier.verify(
                headers_for(genuine, pki.leaf_key, url=genuine_url), genuine
            )
        else:
            genuine_url = CERT_URL  # read from the cache directory, no download
            assert await verifier.verify(headers_for(genuine, pki.leaf_key), genuine)
        downloads_before = len(server.paths)

        async def forged(n: int) -> int:
            headers = {
                "SignatureCertChainUrl": url_of(f"flood{n}"),
                "Signature-256": GARBAGE_SIGNATURE,
            }
            try:
                await verifier.verify(headers, genuine)
            except VerificationError as exc:
                return exc.status
            raise AssertionError("a forged request was accepted")

        statuses = await asyncio.wait_for(
            asyncio.gather(*(forged(n) for n in range(FLOOD))), timeout=60
        )

        assert server.max_in_flight <= MAX_CONCURRENT_DOWNLOADS
        assert 1 <= len(server.paths) - downloads_before <= FLOOD
        assert set(statuses) <= {400, 503} and statuses.count(400) >= 1
        assert verifier.downloads_in_flight == 0
        if cache_dir is not None:  # nothing forged reached the disk
            assert [path.name for path in cache_dir.iterdir()] == [cache_file_name(genuine_url)]
        assert len(verifier.cache.pending) <= 2

        # The genuine chain was not evicted: the next genuine request downloads nothing.
        downloads_before = len(server.paths)
        body = encode(alexa_request())
        assert await verifier.verify(headers_for(body, pki.leaf_key, url=genuine_url), body)
        assert len(server.paths) == downloads_before
        assert verifier.cache.urls() == [genuine_url]


async def test_sequential_flood_keeps_pending_chains_apart(make_verifier, pki):
    """Every forged request here gets its download (one at a time) and a chain that validates:
    they fill the small pending cache only."""
    async with chain_server({}, default=pki.chain_pem) as server:
        verifier = make_verifier(
            cls=LoopbackVerifier,
            base_url=server.base_url,
            memory_cache_size=1,
            pending_cache_size=4,
        )
        body = encode(alexa_request())
        assert await verifier.verify(headers_for(body, pki.leaf_key), body)
        for n in range(100):
            headers = {
                "SignatureCertChainUrl": url_of(f"flood{n}"),
                "Signature-256": GARBAGE_SIGNATURE,
            }
            with pytest.raises(VerificationError, match="signature"):
                await verifier.verify(headers, body)
        assert len(server.paths) == 100
        assert verifier.cache.urls() == [CERT_URL]
        assert verifier.cache.pending.keys() == [url_of(f"flood{n}") for n in range(96, 100)]
        assert [p.name for p in verifier.cache.directory.files()] == [cache_file_name(CERT_URL)]


async def test_cache_directory_is_bounded_least_recently_used_first(make_verifier, pki, cache_dir):
    chain_size = len(pki.chain_pem)
    async with chain_server({}, default=pki.chain_pem) as server:
        verifier = make_verifier(
            cls=LoopbackVerifier,
            base_url=server.base_url,
            max_chain_bytes=chain_size,
            cache_dir_max_files=3,
            cache_dir_max_bytes=3 * chain_size,
        )
        directory = verifier.cache.directory

        async def genuine(url: str) -> None:
            body = encode(alexa_request())
            assert await verifier.verify(headers_for(body, pki.leaf_key, url=url), body)

        urls = [url_of(f"flood{n}") for n in range(5)]
        await genuine(CERT_URL)  # in the directory already: marked used
        for url in urls[:3]:
            await genuine(url)
        assert [p.name for p in directory.files()] == [cache_file_name(u) for u in urls[:3]]
        (cache_dir / "notes.txt").write_text("not the cache's")
        verifier.cache.proven.pop(urls[0])
        await genuine(urls[0])  # reloaded from its file and used again
        for url in urls[3:]:
            await genuine(url)
        assert [p.name for p in directory.files()] == [
            cache_file_name(u) for u in (urls[0], urls[3], urls[4])
        ]
        assert sum(p.stat().st_size for p in directory.files()) <= 3 * chain_size
        assert (cache_dir / "notes.txt").exists()

        tighter = make_verifier(
            max_chain_bytes=chain_size, cache_dir_max_files=5, cache_dir_max_bytes=2 * chain_size
        )
        tighter.cache.directory.store(url_of("extra"), pki.chain_pem)
        assert len(tighter.cache.directory.files()) == 2


async def test_oversized_cache_file_is_refused_unread(make_verifier, pki, cache_dir):
    chain_cache_path(cache_dir, CERT_URL).write_bytes(pki.chain_pem * 20)
    verifier = make_verifier(cls=LoopbackVerifier, max_chain_bytes=len(pki.chain_pem))
    body = encode(alexa_request())
    with pytest.raises(VerificationError, match="too large"):
        await verifier.verify(headers_for(body, pki.leaf_key), body)
    assert verifier.downloads == []
