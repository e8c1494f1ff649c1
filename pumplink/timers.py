"""Timers that send a message to an actor: actors never sleep."""

from __future__ import annotations

import threading

import pykka


def tell_later(ref: pykka.ActorRef, delay: float, message) -> threading.Timer:
    """Tell ``ref`` ``message`` after ``delay`` seconds; a stopped actor just misses it."""

    def fire():
        try:
            ref.tell(message)
        except pykka.ActorDeadError:
            pass

    timer = threading.Timer(max(0.0, delay), fire)
    timer.daemon = True
    timer.start()
    return timer
