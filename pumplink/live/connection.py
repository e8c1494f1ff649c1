"""One WebSocket client as the broadcaster sees it: a bounded outbox and ONE writer greenlet.

Two greenlets writing one gevent-websocket raise ``ConcurrentObjectUseError``, and a sequential
broadcast blocks forever on a client that stops reading. Offering a frame never blocks; a
client whose outbox is full, or whose socket takes no frame for WRITE_STALL_S, is dropped. A
device's state waiting in the outbox is replaced by its newer state (``live.outbox``): a
client that is behind gets each device's latest state, with the skipped ones counted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import itertools
import logging
import socket
import struct
import termios

import gevent
import gevent.lock
from geventwebsocket.exceptions import ProtocolError, WebSocketError
from geventwebsocket.websocket import Header, WebSocket

from pumplink.clock import Clock
from pumplink.live.outbox import Empty, Outbox

log = logging.getLogger(__name__)

# Per client: at most this many frames wait in the outbox, plus what the kernel holds.
OUTBOX_LIMIT = 100
# Without a cap Linux grows a loopback send buffer to megabytes before a stuck client shows.
SEND_BUFFER_BYTES = 16 * 1024
# Data waiting for a peer that takes none of it for this long: the client is not reading; cut it
# off. (Coalescing keeps one flapping pump from filling an outbox, so a full outbox alone no
# longer finds every stuck client.)
WRITE_STALL_S = 5.0
STALL_CHECK_S = 1.0
# A peer that does not answer our close frame within this time is cut off.
CLOSE_WAIT_S = 2.0
# gevent-websocket reads a frame of any announced length into memory; clients only send small JSON.
MAX_MESSAGE_BYTES = 64 * 1024

OPCODE_TEXT, OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG = 0x1, 0x8, 0x9, 0xA

_ENVIRON_KEY = "pumplink.connection"


class _RoutedWebSocket(WebSocket):
    """gevent-websocket's socket (which has __slots__) with its control-frame callbacks sent to our Connection."""

    __slots__ = ()

    def _connection(self):
        return (self.environ or {}).get(_ENVIRON_KEY)

    def handle_ping(self, header, payload):
        conn = self._connection()
        return conn._on_ping(header, payload) if conn is not None else super().handle_ping(header, payload)

    def handle_pong(self, header, payload):
        conn = self._connection()
        return conn._on_pong(header, payload) if conn is not None else None

    def handle_close(self, header, payload):
        conn = self._connection()
        return conn._on_close_frame(header, payload) if conn is not None else super().handle_close(header, payload)

    def close(self, code=1000, message=b""):
        # gevent-websocket calls this on protocol errors from the reading greenlet, and its close
        # frame lacks the status code; our Connection sends the frame (under its lock) instead.
        conn = self._connection()
        if conn is None:
            return super().close(code, message)
        if code != 1000 and not conn.broken:
            reason = message.decode("utf-8", "replace") if isinstance(message, (bytes, bytearray)) else str(message or "")
            conn.goodbye, conn.broken = (code, reason), True
        return None

    def read_frame(self):
        # gevent-websocket's read_frame, with the announced length checked before anything is read.
        conn = self._connection()
        header = Header.decode_header(self.stream)
        if header.flags:
            raise ProtocolError
        if conn is not None:
            conn._check_incoming(header)
        if not header.length:
            return header, b""
        try:
            payload = self.raw_read(header.length)
        except OSError:
            payload = b""
        if len(payload) != header.length:
            raise WebSocketError("Unexpected EOF reading frame payload")
        if header.mask:
            payload = header.unmask_payload(payload)
        return header, payload


@dataclasses.dataclass(frozen=True)
class _Close:
    code: int
    reason: str


@dataclasses.dataclass(frozen=True)
class _Pong:
    payload: bytes


class Connection:
    """One WebSocket client: its outbox, its single writer greenlet and its subscription.

    ``offer`` and ``abort`` may be called from any greenlet and never block. Everything that
    writes the socket holds ``_lock``; once the writer runs, only the writer writes.
    """

    _ids = itertools.count(1)

    def __init__(self, ws, *, ping_s: float, clock: Clock, outbox_limit: int = OUTBOX_LIMIT):
        self.id = next(Connection._ids)
        self.ws = ws
        self.ping_s = ping_s
        self.clock = clock
        self.legacy = False
        self.user_id: int | None = None
        # The role events are filtered by, and when it was read: a newer reading replaces it.
        self.role: str | None = None
        self.role_at: dt.datetime | None = None
        self.device_ids: frozenset[int] | None = None  # None: every device
        self.outbox = Outbox(outbox_limit)
        self.last_heard = clock.monotonic()
        self.close_sent = False
        self.peer_close: int | None = None
        self.goodbye: tuple[int, str] = (1000, "")  # the close frame sent when the reader stops first
        self._incoming = 0
        self.broken = False  # the incoming stream is unreadable: answer, then discard what follows
        self.dead = False
        self.why: str | None = None
        self._closing = False
        self._ping_sent_at: float | None = None
        self._last_legacy: str | None = None
        self._writer: gevent.Greenlet | None = None
        self._stall: gevent.Greenlet | None = None  # armed while sent data waits for the peer
        self._unsent_seen: tuple[int, float] | None = None  # (bytes, since when unchanged)
        self._timers: list[gevent.Greenlet] = []
        self._expiry: gevent.Greenlet | None = None
        self._lock = gevent.lock.Semaphore()
        # gevent-websocket answers pings and close frames from the reading greenlet, which
        # would make it a second writer; route them through our lock and writer instead.
        if ws.environ is not None:
            ws.environ[_ENVIRON_KEY] = self
        if type(ws) is WebSocket:
            ws.__class__ = _RoutedWebSocket
        sock = self._socket()
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
            except OSError:
                log.debug("could not cap the send buffer of websocket %s", self.id)

    def __repr__(self) -> str:
        return f"<Connection {self.id} user={self.user_id} ({self.role}) {'legacy' if self.legacy else 'json'}>"

    # --- any greenlet ----------------------------------------------------------------------
    def wants(self, device_id: int | None) -> bool:
        return self.device_ids is None or device_id is None or device_id in self.device_ids

    def offer(self, frame, key=None) -> bool:
        """Queue a frame (one with a ``key`` replaces a waiting one with that key); False (and the
        client dropped) when its outbox is full."""
        if self.dead or self._closing:
            return False
        if not self.outbox.put(frame, key):
            self.abort(f"its outbox is full ({self.outbox.maxsize} frames): it is not reading")
            return False
        return True

    def heard(self) -> None:
        self.last_heard = self.clock.monotonic()

    def start(self, first: list[str]) -> None:
        """Start the writer: ``first`` frames go out before anything queued meanwhile."""
        if self.dead or self._closing or self.close_sent:
            return
        if self.legacy and first:
            self._last_legacy = first[-1]
        self._writer = gevent.spawn(self._write_loop, list(first))

    def expire_in(self, seconds: float) -> None:
        """Close with 1008 when the token expires (a fresh token re-arms it). JSON mode only: a
        text-mode client cannot re-authenticate, so its access is re-checked by role instead."""
        if self._expiry is not None:
            self._expiry.kill(block=False)
        self._expiry = gevent.spawn_later(max(0.0, seconds), self.close, 1008, "The access token has expired.")

    def close(self, code: int, reason: str) -> None:
        """Close politely (after what is already queued); cut off if the peer does not answer."""
        if self.dead or self._closing or self.close_sent:
            return
        if self._writer is not None and not self._writer.dead:
            if not self.outbox.put(_Close(code, reason)):
                self.abort(f"its outbox is full while closing ({code})")
                return
        else:
            try:
                with gevent.Timeout(CLOSE_WAIT_S):
                    self._send_close(code, reason)
            except (gevent.Timeout, WebSocketError, OSError):
                self.abort(f"the close frame ({code}) could not be sent")
                return
        self._closing = True
        self._timers.append(gevent.spawn_later(CLOSE_WAIT_S, self.abort, "it did not answer the close frame"))

    def abort(self, why: str) -> None:
        """Cut the client off at once: stop its writer and shut the socket down."""
        if self.dead:
            return
        self.dead = True
        self.why = why
        log.info("websocket %s (user %s) dropped: %s", self.id, self.user_id, why)
        writer = self._writer
        if writer is not None and writer is not gevent.getcurrent():
            writer.kill(block=False)
        sock = self._socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def finish(self) -> None:
        """The reading greenlet is done: stop the writer, answer a close frame, release everything."""
        for timer in self._timers + [self._expiry, self._stall]:
            if timer is not None:
                timer.kill(block=False)
        writer = self._writer
        if writer is not None and not writer.dead and writer is not gevent.getcurrent():
            writer.kill(block=True, timeout=1)
        if not self.dead and not self.close_sent:
            code, reason = self.goodbye
            if self.peer_close is not None:
                code, reason = (self.peer_close if self.peer_close not in (1005, 1006) else 1000), ""
            try:
                with gevent.Timeout(1):
                    self._send_close(code, reason)
            except (gevent.Timeout, WebSocketError, OSError):
                pass
        if self.broken and not self.dead:
            self._discard_input()
        self.dead = True
        # gevent-websocket's own close() would send a close frame without its status code.
        self.ws.closed = True
        if self.ws.environ is not None:
            self.ws.environ.pop(_ENVIRON_KEY, None)

    # --- the writer greenlet ---------------------------------------------------------------
    def _write_loop(self, first: list[str]) -> None:
        try:
            for frame in first:
                self._send_frame(frame, OPCODE_TEXT)
            while True:
                try:
                    item = self.outbox.get(timeout=self.ping_s)
                except Empty:
                    if not self._ping():
                        return
                    continue
                if isinstance(item, _Close):
                    self._send_close(item.code, item.reason)
                    return
                if isinstance(item, _Pong):
                    self._send_frame(item.payload, OPCODE_PONG)
                    continue
                if self.legacy:
                    if item == self._last_legacy:
                        continue  # the app hears about changes of on/off only
                    self._last_legacy = item
                try:
                    with gevent.Timeout(WRITE_STALL_S):
                        self._send_frame(item, OPCODE_TEXT)
                except gevent.Timeout:
                    self.abort(f"a frame waited {WRITE_STALL_S:g} s for its socket: it is not reading")
                    return
                if self._stall is None:
                    self._stall = gevent.spawn_later(STALL_CHECK_S, self._check_stall)
        except (WebSocketError, OSError) as exc:
            self.abort(f"writing failed: {exc}")
        except Exception:
            # Whatever it was, this client must not stay registered with a dead writer.
            log.exception("websocket %s writer failed", self.id)
            self.abort("its writer failed")

    def _unsent(self) -> int | None:
        """Bytes sent but not yet taken by the peer (Linux); None where that cannot be read."""
        sock = self._socket()
        try:
            return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        except (OSError, AttributeError, ValueError, TypeError):
            return None

    def _check_stall(self) -> None:
        """While sent data waits for the peer: cut it off once it has taken nothing for WRITE_STALL_S."""
        self._stall = None
        if self.dead:
            return
        unsent, now = self._unsent(), self.clock.monotonic()
        if not unsent:
            self._unsent_seen = None
            return
        seen = self._unsent_seen
        if seen is None or unsent < seen[0]:
            self._unsent_seen = (unsent, now)
        elif now - seen[1] >= WRITE_STALL_S:
            self.abort(f"it took none of {unsent} waiting bytes for {WRITE_STALL_S:g} s: it is not reading")
            return
        self._stall = gevent.spawn_later(STALL_CHECK_S, self._check_stall)

    def _ping(self) -> bool:
        if self._ping_sent_at is not None and self.last_heard < self._ping_sent_at:
            self.abort(f"it did not answer a ping within {self.ping_s:g} s")
            return False
        self._ping_sent_at = self.clock.monotonic()
        self._send_frame(b"", OPCODE_PING)
        return True

    # --- socket writes -----------------------------------------------------------------------
    def _send_frame(self, payload, opcode: int) -> None:
        with self._lock:
            self.ws.send_frame(payload, opcode)

    def _send_close(self, code: int, reason: str) -> None:
        # A close frame carries at most 123 bytes of reason; never cut a character in half.
        text = reason.encode("utf-8")[:120].decode("utf-8", "ignore").encode("utf-8")
        self._send_frame(struct.pack("!H", code) + text, OPCODE_CLOSE)
        self.close_sent = True

    def _discard_input(self) -> None:
        """Say we are done (FIN after our close frame) and drop what the peer still sends, so
        closing with unread input does not reset the connection before the peer reads our frame."""
        sock = self._socket()
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_WR)
            with gevent.Timeout(CLOSE_WAIT_S, False):
                while sock.recv(65536):
                    pass
        except OSError:
            pass

    def _socket(self):
        return getattr(getattr(self.ws, "handler", None), "socket", None)

    # --- gevent-websocket callbacks (the reading greenlet) ------------------------------------
    def _on_ping(self, header, payload) -> None:
        self.heard()
        if self._writer is not None and not self._writer.dead:
            self.offer(_Pong(bytes(payload)))
        else:
            self._send_frame(bytes(payload), OPCODE_PONG)

    def _on_pong(self, header, payload) -> None:
        self.heard()

    def _check_incoming(self, header) -> None:
        if header.opcode in (OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG):
            if header.length > 125:
                raise ProtocolError("control frames carry at most 125 bytes")
            return
        if header.opcode != 0:  # a new message; 0 continues the current one
            self._incoming = 0
        self._incoming += header.length
        if self._incoming > MAX_MESSAGE_BYTES:
            self.goodbye = (1009, f"Messages are limited to {MAX_MESSAGE_BYTES // 1024} KiB.")
            self.broken = True
            raise WebSocketError("message too big")

    def _on_close_frame(self, header, payload) -> None:
        self.peer_close = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
