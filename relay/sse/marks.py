"""What a stream's dispatched frames showed, as bits of `FrameScanner.marks`.

The scanner's two twins set the same bits (the Cython one declares these values again
in _fastsse.pxd; tests/test_scanner.py checks both against one reference). Event-name
marks are always kept; data-line marks only when the scanner was asked to watch them
(`FrameScanner(watch=...)`), so a stream that needs none pays nothing for them.
"""

from __future__ import annotations

from typing import Final

#: `event: message_start` (Anthropic).
MESSAGE_START: Final = 1
#: `event: message_stop` (Anthropic).
MESSAGE_STOP: Final = 2
#: `event: error` (Anthropic, OpenAI Responses).
ERROR_EVENT: Final = 4
#: `event: response.completed`, `response.failed` or `response.incomplete` (OpenAI Responses).
RESPONSE_END: Final = 8
#: A data line whose value starts with `[DONE]` (OpenAI chat and completions; watched).
DONE: Final = 16
#: A data line whose value starts with `{"error"` (OpenAI, Gemini; watched).
DATA_ERROR: Final = 32
#: A data line holding `"finishReason"` anywhere (Gemini's last candidate; watched).
FINISH_REASON: Final = 64

#: Marks that come from data lines: what `watch` may ask for.
DATA_MARKS: Final = DONE | DATA_ERROR | FINISH_REASON
