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

    Text that could be the beginning of a stop string is held back until the next piece shows
    whether it belongs to the answer. With ``trim`` (a chat reply), whitespace before the stop
    string and at the end is dropped too, so it is held back as well; without it (the OpenAI
    completions API) the text before the stop string is returned exactly.
    """

    def __init__(self, stops: Sequence[str], context: str = "", trim: bool = True) -> None:
        """``context`` is text taken to precede the stream (never emitted), e.g. ``"\n"`` so that
        a stop string ``"\n###"`` also matches at the very start."""
        self.stops = [s for s in stops if s]
        self.buffer = context
        self.skip = len(context)
        self.trim = trim
        self.stopped = False

    def _trimmed(self, text: str) -> str:
        return text.rstrip() if self.trim else text

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
            self.buffer = self._trimmed(self.buffer[:cut])
            return self._take(len(self.buffer))
        hold = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.buffer)), 0, -1):
                if self.buffer.endswith(stop[:n]):
                    hold = max(hold, n)
                    break
        kept = self.buffer[: len(self.buffer) - hold]
        return self._take(len(self._trimmed(kept)))

    def flush(self) -> str:
        if self.stopped:
            return ""
        self.buffer = self._trimmed(self.buffer)
        return self._take(len(self.buffer))
