"""Hostile Rasa model archives (``serve --model X.tar.gz``, ``nlg-config``, ``bench rasa``):
every header and member is bounded before the expensive work, a violation is one UserError
line, and nothing is left under the target. Each test builds its archive itself, block by
block; the bombs are a few KB to a few MB and exist only in tmp_path."""

from __future__ import annotations

import gzip
import json
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from support import REPO
from support.hostile import cost_of, small_model_dir

from rasa_hred.cli import main
from rasa_hred.core.checkpoint import max_weights_bytes
from rasa_hred.core.model import HREDConfig
from rasa_hred.errors import UserError
from rasa_hred.integration.archive import (
    MAX_ARCHIVE_BYTES,
    MAX_EXTENDED_HEADER_BYTES,
    MAX_EXTENDED_TOTAL_BYTES,
    MAX_MEMBERS,
    ArchiveLimits,
    ArchiveRefused,
    extract_policy_model,
    is_archive,
)
from rasa_hred.nlg_server.command import ServeOptions, resolve_settings, write_nlg_config

RESOURCE = "train_rasa_hred.HREDPolicy2"
#: Hang guard (the bars are < 1 s; the numbers measured are in the report).
SECONDS = 20
#: The bar for a refused archive's peak memory.
PEAK_MB = 100
GB = 1 << 30


# --- building archives block by block --------------------------------------------------------


def header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    return info.tobuf(tarfile.USTAR_FORMAT)


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % tarfile.BLOCKSIZE)


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE) -> bytes:
    return header(name, len(data), kind) + padded(data)


def pax(records: dict[str, str]) -> bytes:
    """A pax header with these records (``"%d %s=%s\\n"``, the length counting itself)."""
    data = b""
    for key, value in records.items():
        body = f" {key}={value}\n".encode()
        length = len(body) + 1
        while len(str(length)) + len(body) != length:
            length = len(str(length)) + len(body)
        data += str(length).encode() + body
    return member("././@PaxHeader", data, tarfile.XHDTYPE)


END = bytes(2 * tarfile.BLOCKSIZE)


def metadata(policy: dict[str, Any] | None = None) -> bytes:
    node = {
        "uses": "rasa_hred.integration.policy.HREDPolicy",
        "config": policy or {},
        "resource": {"name": RESOURCE},
    }
    return member(
        "metadata.json",
        json.dumps({"predict_schema": {"nodes": {"run_hred": node}}}).encode(),
    )


def model_members(model_dir: Path) -> bytes:
    return b"".join(
        member(f"components/{RESOURCE}/{file}", (model_dir / file).read_bytes())
        for file in ("config.json", "vocab.json", "model.safetensors")
    )


def domain() -> bytes:
    return member("components/domain_provider/domain.yml", (REPO / "domain.yml").read_bytes())


def zeros_gzip(size: int) -> bytes:
    """``size`` zero bytes gzipped as concatenated gzip members (1 KB per MB): a bomb built
    in milliseconds."""
    chunk = 1 << 20
    assert size % chunk == 0
    return gzip.compress(bytes(chunk)) * (size // chunk)


def write(path: Path, *parts: bytes) -> Path:
    """An archive of gzipped ``parts`` (each its own gzip member, as ``gzip`` reads them)."""
    path.write_bytes(b"".join(gzip.compress(part) for part in parts))
    return path


def written(target: Path) -> int:
    """Bytes of the files under ``target``."""
    return sum(f.stat().st_size for f in target.rglob("*") if f.is_file())


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return small_model_dir(tmp_path / "model-dir")


# --- a well-formed archive still works ---------------------------------------------------------


@pytest.mark.parametrize("metadata_first", [False, True])
def test_a_wellformed_archive_is_extracted(tmp_path, model_dir, metadata_first):
    policy = {"max_history": 4, "decoding": {"beam_size": 2}}
    body = [domain(), model_members(model_dir)]
    parts = [metadata(policy), *body] if metadata_first else [*body, metadata(policy)]
    archive = write(tmp_path / "ok.tar.gz", b"".join(parts) + END)
    assert is_archive(archive)
    extracted = extract_policy_model(archive, tmp_path / "out")
    for file in ("config.json", "vocab.json", "model.safetensors"):
        assert (extracted.directory / file).read_bytes() == (model_dir / file).read_bytes()
    assert extracted.policy_config == policy
    assert extracted.domain_file == tmp_path / "out" / "domain.yml"


def test_the_scan_stops_once_the_needed_members_are_found(tmp_path, model_dir):
    """200,000 empty members after the model (listing them took 9.6 s) are never read: past
    the member limit, they would be refused."""
    head = metadata() + domain() + model_members(model_dir)
    archive = tmp_path / "long.tar.gz"
    archive.write_bytes(gzip.compress(head) + gzip.compress(member("x") * 1000) * 200)
    start = time.perf_counter()
    extract_policy_model(archive, tmp_path / "out")
    assert time.perf_counter() - start < SECONDS


# --- headers: CVE-2024-6232 and unbounded reads ----------------------------------------------


def test_an_oversized_pax_header_is_refused_before_tarfile_parses_it(tmp_path):
    """1.2 KB gzipped, a 1 MB pax header of digits: Python 3.10.13's tarfile spends about 45
    minutes in its header regex. Refused on the header's size, in a fresh interpreter."""
    size = 1 << 20
    raw = header("././@PaxHeader", size, tarfile.XHDTYPE) + b"1" * size + member("x") + END
    archive = write(tmp_path / "pax.tar.gz", raw)
    assert archive.stat().st_size < 2000
    target = tmp_path / "out"
    cost = cost_of(
        "rasa_hred.integration.archive", "extract_policy_model", str(archive), str(target)
    )
    assert "ArchiveRefused" in cost["error"]["types"]
    limit = f"header of {size} bytes, more than the limit of {MAX_EXTENDED_HEADER_BYTES}"
    assert limit in cost["error"]["message"]
    assert cost["seconds"] < SECONDS and cost["peak_growth_mb"] < PEAK_MB
    assert not target.exists()
    assert is_archive(archive)  # in this process: the guard is known to work by now


@pytest.mark.parametrize(
    "raw, message",
    [
        (member("././@LongLink", b"a" * 4096, tarfile.GNUTYPE_LONGNAME), "header of 4096 bytes"),
        (member("././@LongLink", b"a" * 4096, tarfile.GNUTYPE_LONGLINK), "header of 4096 bytes"),
        (member("g", b"1" * 2048, tarfile.XGLTYPE), "header of 2048 bytes"),
        (pax({"comment": "x"}) * 9 + member("x"), "more than 8 extended headers in a row"),
        (member("s", b"", tarfile.GNUTYPE_SPARSE), "a sparse member"),
        (pax({"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}) + member("x"), "sparse"),
    ],
    ids=["long-name", "long-link", "global-pax", "pax-chain", "gnu-sparse", "pax-sparse-1.0"],
)
def test_unbounded_headers_are_refused(tmp_path, raw, message):
    """Each is refused by the guard tarfile calls for every header (if a Python stopped
    calling it, these fail: each is cheap to parse, so it would be accepted)."""
    archive = write(tmp_path / "h.tar.gz", raw + END)
    with pytest.raises(ArchiveRefused, match=message) as raised:
        extract_policy_model(archive, tmp_path / "out")
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "out").exists()


def test_extended_headers_are_bounded_in_all(tmp_path):
    records = {"comment": "c" * (MAX_EXTENDED_HEADER_BYTES - 20)}
    raw = b"".join(pax(records) + member(f"f{i}") for i in range(600)) + END
    with pytest.raises(ArchiveRefused, match=f"more than {MAX_EXTENDED_TOTAL_BYTES} bytes in all"):
        extract_policy_model(write(tmp_path / "many.tar.gz", raw), tmp_path / "out")


def test_the_worst_pax_headers_the_limits_allow_stay_cheap(tmp_path):
    """As many all-digit pax headers (tarfile's quadratic case) as the limits let through,
    each at the per-header limit: about 0.5 s of tarfile's regex in all (the ceiling here is
    a hang guard)."""
    count = MAX_EXTENDED_TOTAL_BYTES // MAX_EXTENDED_HEADER_BYTES
    worst = member("././@PaxHeader", b"1" * MAX_EXTENDED_HEADER_BYTES, tarfile.XHDTYPE)
    raw = (worst + member("x")) * count + END
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"no rasa_hred\.HREDPolicy model inside"):
        extract_policy_model(write(tmp_path / "worst.tar.gz", raw), tmp_path / "out")
    assert time.perf_counter() - start < SECONDS


def test_the_member_count_is_bounded(tmp_path):
    """200,000 empty members took 9.6 s to list; the scan stops at the limit."""
    archive = tmp_path / "members.tar.gz"
    archive.write_bytes(gzip.compress(member("x") * 1000) * 200 + gzip.compress(END))
    start = time.perf_counter()
    with pytest.raises(ArchiveRefused, match=f"more than {MAX_MEMBERS} members"):
        extract_policy_model(archive, tmp_path / "out")
    assert time.perf_counter() - start < SECONDS


# --- sizes: the tar bomb ---------------------------------------------------------------------


def weights_bomb(model_dir: Path, size: int) -> list[bytes]:
    """A real config and vocabulary, then a model.safetensors member of ``size`` zero bytes
    (in gzip members of their own), then the archive's end."""
    name = f"components/{RESOURCE}/"
    small = b"".join(
        member(name + file, (model_dir / file).read_bytes())
        for file in ("config.json", "vocab.json")
    )
    return [small, header(name + "model.safetensors", size), zeros_gzip(size), END]


@pytest.mark.parametrize(
    "size, metadata_first, message",
    [
        (3 * GB, False, f"more than {MAX_ARCHIVE_BYTES} bytes of members"),
        (1 * GB, True, f"model.safetensors has {GB} bytes, more than the limit of"),
    ],
    ids=["3GB-rasa-layout", "1GB-metadata-first"],
)
def test_a_tar_bomb_is_refused_before_anything_is_written(
    tmp_path, model_dir, size, metadata_first, message
):
    """3 MB gzipped, a 3 GB model.safetensors (it used to write 3.19 GB in 24 s): refused
    from its header, before its data is decompressed or written. Under the archive's limit
    (1 GB), the weights are bounded by what the archive's own config.json describes."""
    head, weights, data, end = weights_bomb(model_dir, size)
    first, last = (metadata(), b"") if metadata_first else (b"", metadata())
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(
        gzip.compress(first + domain() + head + weights) + data + gzip.compress(last + end)
    )
    assert archive.stat().st_size < 4 << 20
    target = tmp_path / "out"
    cost = cost_of(
        "rasa_hred.integration.archive", "extract_policy_model", str(archive), str(target)
    )
    assert "ArchiveRefused" in cost["error"]["types"]
    assert message in cost["error"]["message"]
    assert cost["seconds"] < SECONDS and cost["peak_growth_mb"] < PEAK_MB
    assert not target.exists()


def test_weights_bigger_than_their_config_describes_are_refused(tmp_path, model_dir):
    """100 MB: inside every archive limit, but 16-wide layers need 100 KB."""
    head, weights, data, end = weights_bomb(model_dir, 100 << 20)
    archive = tmp_path / "fat.tar.gz"
    archive.write_bytes(gzip.compress(metadata() + head + weights) + data + gzip.compress(end))
    config = HREDConfig.from_dict(json.loads((model_dir / "config.json").read_text())["model"])
    bound = max_weights_bytes(config.parameter_count())
    assert bound < 2 << 20
    with pytest.raises(
        ArchiveRefused, match=f"has {100 << 20} bytes, more than the limit of {bound}"
    ):
        extract_policy_model(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_limits_are_keyword_options(tmp_path, model_dir):
    archive = write(tmp_path / "ok.tar.gz", metadata() + domain() + model_members(model_dir) + END)
    target = tmp_path / "out"
    with pytest.raises(
        ArchiveRefused, match=r"the model files hold \d+ bytes, more than the limit of 1000"
    ):
        extract_policy_model(archive, target, limits=ArchiveLimits(total_bytes=1000))
    with pytest.raises(
        ArchiveRefused, match=r"config\.json has \d+ bytes, more than the limit of 100;"
    ):
        extract_policy_model(archive, target, limits=ArchiveLimits(member_bytes=100))
    with pytest.raises(
        ArchiveRefused, match=r"metadata\.json has \d+ bytes, more than the limit of 10;"
    ):
        extract_policy_model(archive, target, limits=ArchiveLimits(metadata_bytes=10))
    with pytest.raises(ArchiveRefused, match="more than 3 members"):
        extract_policy_model(archive, target, limits=ArchiveLimits(members=3))
    assert not target.exists()


def test_a_truncated_archive_leaves_nothing_behind(tmp_path, model_dir):
    """The data ends inside model.safetensors, while it is being written: what was written
    is removed, and what was in the target before is kept."""
    raw = metadata() + domain() + model_members(model_dir)
    archive = write(tmp_path / "cut.tar.gz", raw[:-5000])
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="damaged archive") as raised:
        extract_policy_model(archive, target)
    assert "\n" not in str(raised.value)
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]


# --- the policy's config in metadata.json -----------------------------------------------------


BAD_POLICIES = [
    ({"max_history": -5}, "max_history must be a number of turns >= 0"),
    ({"max_history": "ten"}, "max_history must be a number of turns >= 0 .*'ten'"),
    ({"response": []}, r"response must be a response name, not \[\]"),
    ({"fallback_response": 3}, "fallback_response must be a response name"),
    ({"intents": "chitchat"}, "intents must be a list of intent names"),
    ({"decoding": "fast"}, "decoding must be a mapping"),
    ({"decoding": {"beams": 3}}, "unknown decoding option.*beams"),
    ({"generate": ["x"]}, "generate must be one of"),
]


@pytest.mark.parametrize("policy, message", BAD_POLICIES)
def test_bad_policy_settings_in_the_archive_are_one_user_error(
    tmp_path, model_dir, policy, message
):
    archive = write(
        tmp_path / "p.tar.gz", metadata(policy) + domain() + model_members(model_dir) + END
    )
    with pytest.raises(UserError, match=message) as raised:
        extract_policy_model(archive, tmp_path / "out")
    assert str(raised.value).startswith(f"{archive}: metadata.json: HREDPolicy: ")
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match=message):
        resolve_settings(ServeOptions(model=archive, device="cpu"), tmp_path / "scratch")
    with pytest.raises(UserError, match=message):
        write_nlg_config(archive, REPO / "config.yml", tmp_path / "nlg")
    assert not (tmp_path / "nlg").exists()


@pytest.mark.parametrize("command", ["serve", "nlg-config"])
def test_the_commands_print_one_line_for_a_hostile_archive(tmp_path, model_dir, capsys, command):
    bad = write(
        tmp_path / "p.tar.gz", metadata({"max_history": -5}) + model_members(model_dir) + END
    )
    pax_bomb = write(
        tmp_path / "pax.tar.gz",
        header("././@PaxHeader", 4096, tarfile.XHDTYPE) + b"1" * 4096 + member("x") + END,
    )
    for archive in (bad, pax_bomb):
        if command == "serve":
            argv = ["serve", "--model", str(archive), "--port", "1"]
        else:
            argv = ["nlg-config", "--archive", str(archive), "--out", str(tmp_path / "nlg")]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"rasa-hred: error: {archive}: ") and err.count("\n") == 1


@pytest.mark.parametrize(
    "data, message",
    [(b"[1, 2]", "metadata.json is not a JSON object"), (b"{" * 100_000, "is not JSON")],
)
def test_bad_metadata_is_a_user_error(tmp_path, model_dir, data, message):
    archive = write(
        tmp_path / "m.tar.gz", member("metadata.json", data) + model_members(model_dir) + END
    )
    with pytest.raises(UserError, match=message):
        extract_policy_model(archive, tmp_path / "out")
