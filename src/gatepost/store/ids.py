"""Queue ids: short, unique, sorting by creation time, like Postfix's long
queue ids. Knows nothing of the store's tables."""

from __future__ import annotations

import random
import threading
import time


class QueueIds:
    """Short unique queue ids that sort by creation time, like Postfix's long
    queue ids: 11 base32 digits of microseconds (strictly increasing within a
    process) followed by 5 random base32 digits (apart across processes)."""

    ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford: sorts as ASCII

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()
        self._random = random.Random()  # seeded from the OS once; ids need not be secret

    def next(self) -> str:
        with self._lock:
            micros = max(time.time_ns() // 1000, self._last + 1)
            self._last = micros
        return self._digits(micros, 11) + self._digits(self._random.getrandbits(25), 5)

    @classmethod
    def _digits(cls, value: int, width: int) -> str:
        out = []
        for _ in range(width):
            value, digit = divmod(value, 32)
            out.append(cls.ALPHABET[digit])
        return "".join(reversed(out))


QUEUE_IDS = QueueIds()


def new_queue_id() -> str:
    """A fresh queue id, for a caller that must name a message before storing it."""
    return QUEUE_IDS.next()
