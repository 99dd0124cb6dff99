"""GPT-2 checkpoints by name, from the Hugging Face Hub's local cache or downloaded into it."""

from __future__ import annotations

from pathlib import Path

from gptlab.checkpoints.files import CONFIG_FILE, WEIGHTS_FILE
from gptlab.errors import CheckpointError, first_line

#: GPT-2 checkpoints that ``load_pretrained`` downloads by name, and their Hugging Face Hub repos.
HUB_MODELS: dict[str, str] = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
HUB_URL = "https://huggingface.co"
_TIMEOUT_S = 10


def download_gpt2(name: str) -> Path:
    """The local directory of GPT-2 ``name`` from the Hub's cache, downloading it if needed.

    The cache is tried first without any network access. Otherwise one quick request checks that
    the Hub is reachable before downloading, so an offline machine fails in about a second
    instead of retrying for half a minute.
    """
    if name not in HUB_MODELS:
        raise CheckpointError(f"unknown model {name!r}; valid names: {', '.join(HUB_MODELS)}")
    import huggingface_hub  # only a download needs it

    repo = HUB_MODELS[name]
    files = (CONFIG_FILE, WEIGHTS_FILE)
    try:
        paths = [huggingface_hub.hf_hub_download(repo, f, local_files_only=True) for f in files]
        return Path(paths[0]).parent
    except Exception:  # noqa: BLE001 - not cached (or a broken cache entry): download below
        pass
    try:
        huggingface_hub.get_hf_file_metadata(huggingface_hub.hf_hub_url(repo, CONFIG_FILE), timeout=_TIMEOUT_S)
        paths = [huggingface_hub.hf_hub_download(repo, f, etag_timeout=_TIMEOUT_S) for f in files]
    except Exception as err:  # noqa: BLE001 - any network/hub failure gets the same advice
        reason = first_line(err)
        raise CheckpointError(
            f"could not download {name} from {HUB_URL}/{repo} ({type(err).__name__}: {reason}); without "
            f"network access, download that repository elsewhere and pass its directory instead, e.g. "
            f"init=/path/to/{name} or load_pretrained('/path/to/{name}')"
        ) from None
    return Path(paths[0]).parent
