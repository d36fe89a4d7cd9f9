"""Reading the HREDPolicy's model out of a Rasa model archive (``rasa train``'s .tar.gz).

The NLG server, ``rasa-hred nlg-config`` and ``bench rasa`` take the HRED, the domain and the
policy's config from an archive; this is their one reader. An archive is untrusted input:
every header is bounded before ``tarfile`` parses it, the scan stops once the needed members
are found, only the files needed are taken, into names of our own, after their sizes and the
policy's config were checked, and a failure leaves nothing behind.
"""

from __future__ import annotations

import json
import lzma
import shutil
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from rasa_hred.core.checkpoint import (
    CONFIG_FILE,
    MAX_CONFIG_BYTES,
    MAX_WEIGHTS_BYTES,
    VOCAB_FILE,
    WEIGHTS_FILE,
    max_weights_bytes,
    model_config,
    parse_config,
)
from rasa_hred.core.vocab import MAX_VOCAB_FILE_BYTES
from rasa_hred.errors import UserError
from rasa_hred.integration.loading import validate_policy_config, with_defaults
from rasa_hred.integration.names import POLICY_CLASS

MODEL_FILES = (CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE)
DOMAIN_MEMBER = "components/domain_provider/domain.yml"
METADATA_MEMBER = "metadata.json"

# The limits below are sized from the demo's archive (`make train`): 23.9 MB gzipped, 41
# members holding 28.3 MB, the HRED's model.safetensors 9.2 MB, metadata.json 27 KB,
# domain.yml 4 KB, and one 28-byte pax header (the float mtime Python's tarfile writes) per
# member.

#: Members scanned (files, folders, links): 200,000 empty ones took 9.6 s to list.
MAX_MEMBERS = 5_000
#: The data of all members scanned, taken or skipped: skipping still decompresses.
MAX_ARCHIVE_BYTES = 2 << 30
#: Any one file taken: the largest weights file a loadable model can have (400 MB).
MAX_MEMBER_BYTES = MAX_WEIGHTS_BYTES
#: All files taken together.
MAX_TOTAL_BYTES = 512 << 20
#: metadata.json and domain.yml, which are parsed in memory.
MAX_METADATA_BYTES = 16 << 20
#: One pax or GNU long-name header (a path of 490 characters), and all of them: 9,000 of
#: the demo's (see ``_header_guard`` for their cost).
MAX_EXTENDED_HEADER_BYTES = 512
MAX_EXTENDED_TOTAL_BYTES = 256 << 10
#: Extended headers in a row before a member (tarfile reads each chain recursively).
MAX_EXTENDED_CHAIN = 8

# What reading a damaged or truncated archive raises (zlib's and lzma's own errors are
# neither OSError nor TarError).
_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)
# pax (POSIX, global, Solaris) and GNU long name/link headers.
_EXTENDED_TYPES = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)


@dataclass(frozen=True)
class ArchiveLimits:
    """What ``extract_policy_model`` reads at most; the defaults are the module's limits."""

    members: int = MAX_MEMBERS
    archive_bytes: int = MAX_ARCHIVE_BYTES
    member_bytes: int = MAX_MEMBER_BYTES
    total_bytes: int = MAX_TOTAL_BYTES
    metadata_bytes: int = MAX_METADATA_BYTES
    extended_header_bytes: int = MAX_EXTENDED_HEADER_BYTES
    extended_total_bytes: int = MAX_EXTENDED_TOTAL_BYTES


class ArchiveRefused(UserError):
    """A tar archive over one of the limits, or with a member we never read."""


@dataclass
class ArchiveModel:
    """What ``extract_policy_model`` took from a Rasa model archive."""

    directory: Path  # config.json, vocab.json, model.safetensors
    policy_config: dict[str, Any]  # the HREDPolicy's config as trained (may be {}), valid
    resource: str  # the policy's folder under components/
    domain_file: Path | None  # the archive's domain.yml, extracted next to the model


def is_archive(path: str | Path) -> bool:
    """Whether ``path`` is a tar archive (compressed or not). Only its first header is read,
    through the same guard as extraction (``tarfile.is_tarfile`` parses any header)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with _open_archive(path, ArchiveLimits()):
            return True
    except ArchiveRefused:
        return True  # a tar archive all the same; extracting it says why it is refused
    except UserError:
        return False


def extract_policy_model(
    archive: str | Path, target: str | Path, *, limits: ArchiveLimits | None = None
) -> ArchiveModel:
    """Extract the HREDPolicy's model directory (and the domain) from a Rasa model archive.

    The policy is found through ``metadata.json`` (the node that uses ``...HREDPolicy``),
    else as the one ``components/`` folder holding the three model files; its config there
    must be a valid policy config. Only the needed regular files are copied, by reading them
    from the archive and writing them under ``target`` with names of our own, once every
    size is known to be within ``limits`` (the weights also within what the model's
    ``config.json`` describes). An absolute or ``..`` member, a link or device where a file
    is needed, or any limit exceeded is a ``UserError``, and nothing is left under
    ``target``."""
    archive, target = Path(archive), Path(target)
    limits = limits or ArchiveLimits()
    with _open_archive(archive, limits) as tar:
        scan = _Scan(archive, tar, limits)
        try:
            scan.run()
            resource, config = scan.policy()
            try:
                validate_policy_config(with_defaults(config))
            except UserError as error:
                raise UserError(f"{archive}: metadata.json: {error}") from error
            taken = scan.take(resource)
        except _READ_ERRORS as error:
            raise UserError(f"{archive}: damaged archive ({error})") from error
        _write(archive, tar, taken, target)
    domain_file: Path | None = target / "domain.yml"
    if DOMAIN_MEMBER not in taken:  # an older archive keeps the domain in its metadata
        domain = scan.metadata.get("domain")
        if isinstance(domain, dict):
            import yaml

            (target / "domain.yml").write_text(yaml.safe_dump(domain), encoding="utf-8")
        else:
            domain_file = None
    return ArchiveModel(target / "model", dict(config), resource, domain_file)


def _open_archive(archive: Path, limits: ArchiveLimits) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, "r:*", tarinfo=_header_guard(archive, limits))
    except _READ_ERRORS as error:
        raise UserError(f"{archive}: not a readable Rasa model archive ({error})") from error


def _header_guard(archive: Path, limits: ArchiveLimits) -> type[tarfile.TarInfo]:
    """A ``TarInfo`` class for ``tarfile.open(tarinfo=...)`` that refuses, before tarfile
    parses them, the headers whose parsing has no bound on Python 3.10.13:

    - Extended headers (pax ``x``/``g``/``X``, GNU long names ``L``/``K``) are read whole into
      memory, and tarfile searches a pax header with a regex that is quadratic in a run of
      digits (CVE-2024-6232, fixed in 3.10.15: a 1 MB header of digits, 1.2 KB gzipped, takes
      about 45 minutes). ``TarInfo._proc_member`` is where tarfile dispatches on a header's
      type, when only its fixed 512-byte block is decoded: the size checked here is that
      block's. So one such header costs at most the square of ``extended_header_bytes``, and
      all of them ``extended_total_bytes / extended_header_bytes`` times that: 0.5 s for 512
      all-digit headers of 512 bytes, the worst the defaults let through, on a busy 2-core
      machine. A chain of them (read recursively) is at most ``MAX_EXTENDED_CHAIN`` long.
    - GNU sparse members: their maps are read block by block with no bound (and a sparse
      file is never a model file).

    ``_proc_member`` and ``_proc_gnusparse_10`` are tarfile internals (unchanged from 3.8 to
    3.13); ``tests/test_hostile_archives.py`` fails if a Python stops calling them.
    """
    extended = {"bytes": 0, "chain": 0}

    def refuse(what: str) -> ArchiveRefused:
        return _refused(archive, what)

    class GuardedTarInfo(tarfile.TarInfo):
        def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
            if self.type in _EXTENDED_TYPES:
                extended["bytes"] += self.size
                extended["chain"] += 1
                if self.size > limits.extended_header_bytes:
                    raise refuse(
                        f"an extended (pax or long-name) header of {self.size} bytes, more "
                        f"than the limit of {limits.extended_header_bytes}"
                    )
                if extended["bytes"] > limits.extended_total_bytes:
                    raise refuse(
                        "extended (pax or long-name) headers of more than "
                        f"{limits.extended_total_bytes} bytes in all"
                    )
                if extended["chain"] > MAX_EXTENDED_CHAIN:
                    raise refuse(f"more than {MAX_EXTENDED_CHAIN} extended headers in a row")
            else:
                extended["chain"] = 0
                if self.type == tarfile.GNUTYPE_SPARSE:
                    raise refuse(f"a sparse member {self.name!r}")
            return super()._proc_member(tar)  # type: ignore[misc]

        def _proc_gnusparse_10(self, *args: object) -> None:  # the sparse map of pax 1.0
            raise refuse("a sparse member (pax GNU.sparse 1.0)")

    return GuardedTarInfo


class _Scan:
    """One pass over an archive's members, as far as needed, within the limits."""

    def __init__(self, archive: Path, tar: tarfile.TarFile, limits: ArchiveLimits) -> None:
        self.archive, self.tar, self.limits = archive, tar, limits
        self.members: dict[str, tarfile.TarInfo] = {}  # the names we may take
        self.metadata: dict[str, Any] = {}

    def run(self) -> None:
        count = data = 0
        while (member := self.tar.next()) is not None:
            count, data = count + 1, data + member.size
            if count > self.limits.members:
                raise _refused(self.archive, f"more than {self.limits.members} members")
            if data > self.limits.archive_bytes:
                raise _refused(
                    self.archive, f"more than {self.limits.archive_bytes} bytes of members"
                )
            name = _safe_name(member.name)
            if name is None or not _may_take(name):
                continue
            self.members[name] = member
            if name == METADATA_MEMBER:
                self.metadata = self._read_metadata()
            if self._complete():
                return  # a Rasa archive ends with metadata.json: this is for the others

    def _read_metadata(self) -> dict[str, Any]:
        try:
            metadata = json.loads(self.read(METADATA_MEMBER))
        except (ValueError, RecursionError) as error:
            raise UserError(f"{self.archive}: metadata.json is not JSON ({error})") from error
        if not isinstance(metadata, dict):
            raise UserError(f"{self.archive}: metadata.json is not a JSON object")
        return metadata

    def _complete(self) -> bool:
        """Whether the policy the metadata names, and the domain, have all been seen."""
        resources = {resource for resource, _ in _policy_nodes(self.metadata)}
        needed = [f"components/{r}/{file}" for r in resources for file in MODEL_FILES]
        return bool(resources) and all(n in self.members for n in [*needed, DOMAIN_MEMBER])

    def policy(self) -> tuple[str, dict[str, Any]]:
        """The HREDPolicy's resource (its folder under components/) and config."""
        nodes = _policy_nodes(self.metadata)
        if not nodes:  # no metadata: look for the model files themselves
            folders = {
                name.split("/")[1]
                for name in self.members
                if name.startswith("components/") and name.count("/") == 2
            }
            nodes = [
                (folder, {})
                for folder in sorted(folders)
                if all(f"components/{folder}/{file}" in self.members for file in MODEL_FILES)
            ]
        resources = sorted({resource for resource, _ in nodes})
        if not resources:
            raise UserError(f"{self.archive}: no rasa_hred.{POLICY_CLASS} model inside")
        if len(resources) > 1:
            raise UserError(
                f"{self.archive}: several HRED policies ({', '.join(resources)}); "
                "extract one and pass its directory"
            )
        resource = resources[0]
        return resource, next(config for r, config in nodes if r == resource)

    def take(self, resource: str) -> dict[str, tarfile.TarInfo]:
        """The members to write (member name -> member), every size checked: each within its
        limit and what the model loader reads (the weights: what ``config.json`` describes),
        all within the total."""
        names = [f"components/{resource}/{file}" for file in MODEL_FILES]
        for name in names:
            if name not in self.members:
                raise UserError(f"{self.archive}: the policy's folder lacks {name.split('/')[-1]}")
        limits = self.limits
        config_name, vocab_name, weights_name = names
        source = f"{self.archive}: {config_name}"
        document = parse_config(self.read(config_name, MAX_CONFIG_BYTES), source)
        parameters = model_config(document, source).parameter_count()
        bounds = {  # what the model loader would read at most
            config_name: MAX_CONFIG_BYTES,
            vocab_name: MAX_VOCAB_FILE_BYTES,
            weights_name: max_weights_bytes(parameters),
        }
        if DOMAIN_MEMBER in self.members:
            bounds[DOMAIN_MEMBER] = limits.metadata_bytes
        taken = {
            name: self.regular(name, min(bound, limits.member_bytes))
            for name, bound in bounds.items()
        }
        total = sum(member.size for member in taken.values())
        if total > limits.total_bytes:
            raise _refused(
                self.archive,
                f"the model files hold {total} bytes, more than the limit of {limits.total_bytes}",
            )
        return taken

    def regular(self, name: str, bound: int) -> tarfile.TarInfo:
        member = self.members[name]
        if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or member.sparse is not None:
            raise UserError(f"{self.archive}: {name} is not a regular file")
        if member.size > bound:
            raise _refused(
                self.archive, f"{name} has {member.size} bytes, more than the limit of {bound}"
            )
        return member

    def read(self, name: str, bound: int | None = None) -> bytes:
        member = self.regular(name, self.limits.metadata_bytes if bound is None else bound)
        handle = self.tar.extractfile(member)
        assert handle is not None  # a regular file always has a handle
        return handle.read()


def _write(
    archive: Path, tar: tarfile.TarFile, taken: dict[str, tarfile.TarInfo], target: Path
) -> None:
    """Write the taken members (model files into ``target/model``, the domain as
    ``target/domain.yml``); on any failure remove what was written."""
    directory = target / "model"
    created = _first_missing(directory)
    written: list[Path] = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, member in taken.items():
            path = (
                target / "domain.yml" if name == DOMAIN_MEMBER else directory / name.split("/")[-1]
            )
            source: IO[bytes] | None = tar.extractfile(member)
            assert source is not None  # a regular file always has a handle
            written.append(path)
            with source, path.open("wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
    except BaseException as error:
        for path in written:
            path.unlink(missing_ok=True)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        if isinstance(error, _READ_ERRORS):
            raise UserError(f"{archive}: damaged archive ({error})") from error
        raise


def _refused(archive: Path, what: str) -> ArchiveRefused:
    return ArchiveRefused(f"{archive}: {what}; refusing the archive")


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (``None`` if it does)."""
    missing = None
    while not path.exists() and path != path.parent:
        missing, path = path, path.parent
    return missing


def _safe_name(name: str) -> str | None:
    """The member's path if it is a plain relative path, ``None`` for the archive root."""
    if name in ("", ".", "./", "/"):
        return None
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name or "\x00" in name:
        raise UserError(f"the archive has an unsafe member {name!r}; refusing to read it")
    parts = [p for p in path.parts if p != "."]
    return "/".join(parts) or None


def _may_take(name: str) -> bool:
    """Whether a member could be one we take: metadata, domain, a components/ model file."""
    parts = name.split("/")
    return name in (METADATA_MEMBER, DOMAIN_MEMBER) or (
        len(parts) == 3 and parts[0] == "components" and parts[2] in MODEL_FILES
    )


def _policy_nodes(metadata: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(resource name, config) of every HREDPolicy node in the archive's predict schema."""
    schema = metadata.get("predict_schema")
    nodes = schema.get("nodes") if isinstance(schema, Mapping) else None
    found = []
    for node in nodes.values() if isinstance(nodes, Mapping) else []:
        if not isinstance(node, Mapping):
            continue
        uses = str(node.get("uses") or "")
        resource = node.get("resource")
        if not uses.endswith(POLICY_CLASS) or not isinstance(resource, Mapping):
            continue
        name = resource.get("name")
        config = node.get("config")
        if isinstance(name, str) and "/" not in name and name not in ("", ".", ".."):
            found.append((name, dict(config) if isinstance(config, Mapping) else {}))
    return found
