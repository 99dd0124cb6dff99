"""Data: downloads, text sources, token caches and the Lightning data modules built on them."""

from gptlab.data.classification import SMSSpamDataModule, TextClassificationDataModule
from gptlab.data.preference import PreferenceDataModule
from gptlab.data.pretrain import PretrainDataModule, SlidingWindowDataset
from gptlab.data.sources import (
    THE_VERDICT_SHA256,
    THE_VERDICT_URL,
    EmbeddedSource,
    FileSource,
    HFSource,
    TextSource,
    cache_root,
    download,
    extract_member,
    local_text_source,
    read_text_source,
    sha256_file,
)
from gptlab.data.token_cache import build_token_cache, open_tokens, read_token_meta, token_cache_path

__all__ = [
    "THE_VERDICT_SHA256",
    "THE_VERDICT_URL",
    "EmbeddedSource",
    "FileSource",
    "HFSource",
    "PreferenceDataModule",
    "PretrainDataModule",
    "SMSSpamDataModule",
    "SlidingWindowDataset",
    "TextClassificationDataModule",
    "TextSource",
    "build_token_cache",
    "cache_root",
    "download",
    "extract_member",
    "local_text_source",
    "open_tokens",
    "read_text_source",
    "read_token_meta",
    "sha256_file",
    "token_cache_path",
]
