"""Message ids already handled: a resumed gateway session replays events, and nothing may run twice."""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

SEEN_MESSAGES: Final = 4096  # message ids remembered (the oldest are forgotten first)


class SeenMessages:
    """A bounded set of message ids; :meth:`claim` is True only the first time an id comes."""

    def __init__(self, size: int = SEEN_MESSAGES) -> None:
        self.size = size
        self._ids: OrderedDict[int, None] = OrderedDict()

    def claim(self, message_id: int) -> bool:
        """True the first time ``message_id`` is seen; False for a repeated event."""
        if message_id in self._ids:
            return False
        self._ids[message_id] = None
        while len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return True
