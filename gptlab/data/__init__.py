"""Data: downloads, text sources, token caches, labelled tables and the Lightning data modules built on them.

- ``downloads``: cached, sha256-verified downloads and zip extraction;
- ``sources``: pretraining text (embedded, files, URLs, Hugging Face datasets) as chunk streams;
- ``token_cache`` / ``pretrain``: a corpus tokenized once, cut into next-token windows;
- ``tables`` / ``classification`` / ``sms_spam``: labelled texts padded with one ``TextEncoding``;
- ``records`` / ``instruction`` / ``preference``: instruction and preference records, split as the
  book does; the chapter-7 collate and DPO's prompt/chosen/rejected batches.
"""

from gptlab.data.classification import TextClassificationDataModule, encode_texts
from gptlab.data.downloads import cache_root, download, extract_member, sha256_file
from gptlab.data.instruction import InstructionDataModule
from gptlab.data.preference import PreferenceDataModule
from gptlab.data.pretrain import PretrainDataModule, SlidingWindowDataset
from gptlab.data.sms_spam import SMSSpamDataModule
from gptlab.data.sources import (
    THE_VERDICT_SHA256,
    THE_VERDICT_URL,
    EmbeddedSource,
    FileSource,
    HFSource,
    TextSource,
    local_text_source,
    read_text_source,
)
from gptlab.data.token_cache import build_token_cache, open_tokens, read_token_meta, token_cache_path
from gptlab.tokenizer import TextEncoding

__all__ = [
    "THE_VERDICT_SHA256",
    "THE_VERDICT_URL",
    "EmbeddedSource",
    "FileSource",
    "HFSource",
    "InstructionDataModule",
    "PreferenceDataModule",
    "PretrainDataModule",
    "SMSSpamDataModule",
    "SlidingWindowDataset",
    "TextClassificationDataModule",
    "TextEncoding",
    "TextSource",
    "build_token_cache",
    "cache_root",
    "download",
    "encode_texts",
    "extract_member",
    "local_text_source",
    "open_tokens",
    "read_text_source",
    "read_token_meta",
    "sha256_file",
    "token_cache_path",
]
