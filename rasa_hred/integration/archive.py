"""Reading the HREDPolicy's model out of a Rasa model archive (``rasa train``'s .tar.gz).

The NLG server, ``rasa-hred nlg-config`` and ``bench rasa`` take the HRED, the domain and the
policy's config from an archive; this is their one reader. An archive is untrusted input: only
the files needed are read, into names of our own, and anything unusual is refused.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from rasa_hred.core.checkpoint import CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE
from rasa_hred.errors import UserError
from rasa_hred.integration.names import POLICY_CLASS

MODEL_FILES = (CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE)
DOMAIN_MEMBER = "components/domain_provider/domain.yml"
METADATA_MEMBER = "metadata.json"
MAX_METADATA_BYTES = 64 << 20


@dataclass
class ArchiveModel:
    """What ``extract_policy_model`` took from a Rasa model archive."""

    directory: Path  # config.json, vocab.json, model.safetensors
    policy_config: dict[str, Any]  # the HREDPolicy's config as trained (may be {})
    resource: str  # the policy's folder under components/
    domain_file: Path | None  # the archive's domain.yml, extracted next to the model


def is_archive(path: str | Path) -> bool:
    return Path(path).is_file() and tarfile.is_tarfile(str(path))


def _safe_name(name: str) -> str | None:
    """The member's path if it is a plain relative path, ``None`` for the archive root."""
    if name in ("", ".", "./", "/"):
        return None
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name or "\x00" in name:
        raise UserError(f"the archive has an unsafe member {name!r}; refusing to read it")
    parts = [p for p in path.parts if p != "."]
    return "/".join(parts) or None


def extract_policy_model(archive: str | Path, target: str | Path) -> ArchiveModel:
    """Extract the HREDPolicy's model directory (and the domain) from a Rasa model archive.

    Only the needed regular files are copied, by reading them from the archive and writing
    them under ``target`` with names of our own; an archive with an absolute or ``..``
    member is refused, and a needed file that is a link or a device is an error. The policy
    is found through ``metadata.json`` (the node that uses ``...HREDPolicy``), else as the
    one ``components/`` folder holding the three model files."""
    archive, target = Path(archive), Path(target)
    with _open_archive(archive) as tar:
        try:
            members: dict[str, tarfile.TarInfo] = {}
            for member in tar.getmembers():
                name = _safe_name(member.name)
                if name is not None:
                    members[name] = member
        except (tarfile.TarError, OSError, EOFError) as error:
            raise UserError(f"{archive}: damaged archive ({error})") from error

        def regular(name: str) -> tarfile.TarInfo:
            member = members[name]
            if not member.isfile():
                raise UserError(f"{archive}: {name} is not a regular file")
            return member

        def read(name: str) -> bytes:
            member = regular(name)
            if member.size > MAX_METADATA_BYTES:
                raise UserError(f"{archive}: {name} is too large ({member.size} bytes)")
            handle = tar.extractfile(member)
            assert handle is not None  # a regular file always has a handle
            return handle.read()

        metadata: dict[str, Any] = {}
        if METADATA_MEMBER in members:
            try:
                metadata = json.loads(read(METADATA_MEMBER))
            except ValueError as error:
                raise UserError(f"{archive}: metadata.json is not JSON ({error})") from error
        nodes = _policy_nodes(metadata)
        if not nodes:  # no metadata: look for the model files themselves
            folders = {
                name.split("/")[1]
                for name in members
                if name.startswith("components/") and name.count("/") == 2
            }
            nodes = [
                (folder, {})
                for folder in sorted(folders)
                if all(f"components/{folder}/{file}" in members for file in MODEL_FILES)
            ]
        resources = sorted({resource for resource, _ in nodes})
        if not resources:
            raise UserError(f"{archive}: no rasa_hred.{POLICY_CLASS} model inside")
        if len(resources) > 1:
            raise UserError(
                f"{archive}: several HRED policies ({', '.join(resources)}); "
                "extract one and pass its directory"
            )
        resource = resources[0]
        config = next(config for r, config in nodes if r == resource)
        directory = target / "model"
        directory.mkdir(parents=True, exist_ok=True)
        for file in MODEL_FILES:
            name = f"components/{resource}/{file}"
            if name not in members:
                raise UserError(f"{archive}: the policy's folder lacks {file}")
            source = tar.extractfile(regular(name))
            assert source is not None  # a regular file always has a handle
            with source, (directory / file).open("wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
        domain_file = None
        if DOMAIN_MEMBER in members:
            domain_file = target / "domain.yml"
            domain_file.write_bytes(read(DOMAIN_MEMBER))
        elif isinstance(metadata.get("domain"), dict):
            import yaml

            domain_file = target / "domain.yml"
            domain_file.write_text(yaml.safe_dump(metadata["domain"]), encoding="utf-8")
    return ArchiveModel(directory, dict(config), resource, domain_file)


def _open_archive(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as error:
        raise UserError(f"{archive}: not a readable Rasa model archive ({error})") from error


def _policy_nodes(metadata: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(resource name, config) of every HREDPolicy node in the archive's predict schema."""
    schema = metadata.get("predict_schema")
    nodes = schema.get("nodes") if isinstance(schema, Mapping) else None
    found = []
    for node in (nodes or {}).values():
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
