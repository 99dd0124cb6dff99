"""Generated ids into text as they arrive: whole characters only, and nothing past a stop string."""

from __future__ import annotations

from collections.abc import Sequence

from gptlab.tokenizer import Tokenizer

#: Tokens whose text is held back at most, waiting for the rest of a split UTF-8 character.
_MAX_PENDING = 8


class TextStreamer:
    """Turns generated ids into text as they arrive.

    A BPE token can end in the middle of a multi-byte UTF-8 character, whose text then decodes
    to U+FFFD. Such tokens are held back until the character is complete, so the printed text
    never contains a replacement character that the full decode would not.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.pending: list[int] = []

    def push(self, token_id: int) -> str:
        """The text that ``token_id`` completes (possibly empty)."""
        self.pending.append(token_id)
        text = self.tokenizer.decode(self.pending)
        if text.endswith("\ufffd") and len(self.pending) < _MAX_PENDING:
            return ""
        self.pending.clear()
        return text

    def flush(self) -> str:
        """Whatever is still held back, decoded as well as it can be."""
        text = self.tokenizer.decode(self.pending) if self.pending else ""
        self.pending.clear()
        return text


class StopStreamer:
    """Passes text through until a stop string appears; what precedes it is all that is emitted.

    Text that could be the beginning of a stop string, and trailing whitespace, is held back
    until the next piece shows whether it belongs to the answer.
    """

    def __init__(self, stops: Sequence[str], context: str = "") -> None:
        """``context`` is text taken to precede the stream (never emitted), e.g. ``"\n"`` so that
        a stop string ``"\n###"`` also matches at the very start."""
        self.stops = [s for s in stops if s]
        self.buffer = context
        self.skip = len(context)
        self.stopped = False

    def _take(self, end: int) -> str:
        out, self.buffer = self.buffer[:end], self.buffer[end:]
        dropped = min(self.skip, len(out))
        self.skip -= dropped
        return out[dropped:]

    def push(self, text: str) -> str:
        if self.stopped:
            return ""
        self.buffer += text
        cut = min((i for i in (self.buffer.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self.buffer = self.buffer[:cut].rstrip()
            return self._take(len(self.buffer))
        hold = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.buffer)), 0, -1):
                if self.buffer.endswith(stop[:n]):
                    hold = max(hold, n)
                    break
        kept = self.buffer[: len(self.buffer) - hold]
        return self._take(len(kept.rstrip()))

    def flush(self) -> str:
        if self.stopped:
            return ""
        self.buffer = self.buffer.rstrip()
        return self._take(len(self.buffer))
