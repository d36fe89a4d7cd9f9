"""A Rasa config that reuses the HRED trained into a model archive, in any ``generate`` mode.

Changing an HREDPolicy option in ``config.yml`` makes ``rasa train`` retrain the HRED, the
slow part (the demo's takes about 12 minutes on 2 cores). A derived config points the
policy's ``model:`` at the HRED copied out of an archive, so the policy's training is a copy
and ``rasa train`` with it re-fits only the cheap parts (from Rasa's cache, ``.rasa/cache``
of its working directory, where they are unchanged). ``rasa-hred nlg-config`` (``generate:
nlg_server``) and ``rasa-hred bench rasa`` (each mode it compares) derive their configs here.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rasa_hred.errors import UserError
from rasa_hred.integration.archive import extract_policy_model
from rasa_hred.integration.loading import GENERATE_MODES, validate_policy_config, with_defaults
from rasa_hred.integration.names import POLICY_CLASS

#: What :func:`derive_config` writes under its ``out``.
CONFIG_NAME = "config.yml"
HRED_DIR = "hred"


def hred_entries(rasa_config: object) -> list[dict[str, Any]]:
    """The HREDPolicy entries of a parsed Rasa config (the dicts themselves, to change)."""
    policies = rasa_config.get("policies") if isinstance(rasa_config, dict) else None
    return [
        policy
        for policy in (policies if isinstance(policies, list) else [])
        if isinstance(policy, dict) and str(policy.get("name", "")).endswith(POLICY_CLASS)
    ]


def derive_config(
    archive: Path,
    config: Path,
    out: Path,
    generate: str,
    options: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``out/config.yml``: ``config`` with ``generate``, ``options`` and ``model:
    out/hred`` (the HRED copied out of ``archive``) on each of its HREDPolicy entries, so
    ``rasa train`` with it does not retrain the HRED. Returns the config's path.

    The config and the derived policy options are checked, and the archive is read, before
    anything is written: a bad config, option or archive leaves nothing under ``out``."""
    import yaml

    archive, config, out = Path(archive), Path(config), Path(out)
    if generate not in GENERATE_MODES:
        raise UserError(f"generate must be one of {', '.join(GENERATE_MODES)}, not {generate!r}")
    try:
        rasa_config = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise UserError(f"cannot read {config}: {error}") from error
    entries = hred_entries(rasa_config)
    if not entries:
        raise UserError(f"{config}: no rasa_hred.{POLICY_CLASS} among the policies")
    hred = out / HRED_DIR
    for entry in entries:
        entry.update(options or {})
        entry.update(generate=generate, model=str(hred))
        try:
            validate_policy_config(with_defaults({k: v for k, v in entry.items() if k != "name"}))
        except UserError as error:
            raise UserError(f"{config}: {error}") from error
    with tempfile.TemporaryDirectory(prefix="rasa-hred-derive-") as scratch:
        extracted = extract_policy_model(archive, scratch)
        if hred.exists():
            shutil.rmtree(hred)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copytree(extracted.directory, hred)
    header = (
        f"# Derived from {config} and {archive} (rasa_hred.integration.derive): its\n"
        f"# {POLICY_CLASS} with `generate: {generate}` and the HRED the archive was trained\n"
        "# with (`model:`), so `rasa train` with this config does not retrain the HRED.\n"
    )
    written = out / CONFIG_NAME
    written.write_text(header + yaml.safe_dump(rasa_config, sort_keys=False), encoding="utf-8")
    return written
