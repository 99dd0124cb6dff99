"""The UCI SMS Spam Collection (book chapter 6): the book's spam classifier data, downloaded once."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gptlab.data.classification import TextClassificationDataModule
from gptlab.data.downloads import cache_root, download, extract_member, sha256_file
from gptlab.errors import DataError

SMS_SPAM_URL = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
SMS_SPAM_MEMBER = "SMSSpamCollection"
#: sha256 of the ``SMSSpamCollection`` file inside the UCI archive (the archive's own is not pinned).
SMS_SPAM_SHA256 = "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"


class SMSSpamDataModule(TextClassificationDataModule):
    """The UCI SMS Spam Collection prepared exactly as in the book's chapter 6.

    The archive is downloaded once (``url``; the archive itself is not checksum-pinned) and its
    ``SMSSpamCollection`` extracted and verified against ``member_sha256``; or ``path`` names a
    local copy of that file. The TSV is read as the book reads it, with pandas' default quoting:
    a message starting with ``"`` runs to the next lone quote, so two lines of the file merge into
    one message and the 5,574 lines give 5,572 examples (4,825 ham, 747 spam), the book's counts.
    With ``balance`` (the book's choice), ham is undersampled to 747: 1,494 examples, split
    1,045 / 149 / 300.
    """

    def __init__(
        self,
        path: str | None = None,
        url: str = SMS_SPAM_URL,
        sha256: str | None = None,
        member: str = SMS_SPAM_MEMBER,
        member_sha256: str | None = SMS_SPAM_SHA256,
        cache_dir: str | None = None,
        balance: bool = True,
        label_names: Sequence[str] = ("ham", "spam"),
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("format", "tsv")
        kwargs.setdefault("column_names", ["Label", "Text"])
        kwargs.setdefault("text_column", "Text")
        kwargs.setdefault("label_column", "Label")
        super().__init__(path=None, balance=balance, label_names=label_names, **kwargs)
        self.local_path = path
        self.url = url
        self.sha256 = sha256
        self.member = member
        self.member_sha256 = member_sha256
        self.cache_dir = cache_dir

    def source_paths(self) -> dict[str, Path]:
        if self.local_path is not None:
            path = self._existing(self.local_path, "data.path")
            if self.member_sha256 is not None and sha256_file(path) != self.member_sha256:
                warnings.warn(
                    f"{path} differs from the UCI SMSSpamCollection (sha256 {self.member_sha256}); "
                    "splits and accuracies will not match the book's",
                    stacklevel=2,
                )
            return {"all": path}
        directory = cache_root(self.cache_dir) / "downloads" / "sms_spam"
        archive = download(self.url, self.sha256, directory, local_hint="data.path")
        extracted = extract_member(archive, self.member, directory)
        if self.member_sha256 is not None:
            found = sha256_file(extracted)
            if found != self.member_sha256:
                extracted.unlink(missing_ok=True)
                raise DataError(
                    f"{self.member} from {self.url} has sha256 {found}, expected {self.member_sha256}; "
                    f"the archive changed at its source or is corrupted: delete {archive} to download it "
                    "again, or pass a verified local copy with data.path=/path/to/SMSSpamCollection"
                )
        return {"all": extracted}

