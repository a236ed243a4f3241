"""A proxy for one HTTP/2 (gRPC) connection on loopback that holds back the server's frames, so a
test decides when the client learns what the server did."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # what a client sends before its first frame
_HEADERS, _RST_STREAM, _PING = 0x1, 0x3, 0x6
_END_STREAM = _ACK = 0x1
_OPAQUE = b"h2proxy!"  # the payload of the proxy's own PING


class _FrameReader:
    """The whole frames of one direction of the connection, in order."""

    def __init__(self, sock: socket.socket, preface: bytes = b"") -> None:
        self.sock = sock
        self.buffer = b""
        self.preface = preface

    def _read(self, size: int) -> bytes | None:
        while len(self.buffer) < size:
            data = self.sock.recv(1 << 20)
            if not data:
                return None
            self.buffer += data
        chunk, self.buffer = self.buffer[:size], self.buffer[size:]
        return chunk

    def next(self) -> tuple[bytes, int, int, int, bytes] | None:
        """(the frame's bytes, type, flags, stream id, payload), or None at the end."""
        if self.preface:
            preface, self.preface = self.preface, b""
            if self._read(len(preface)) != preface:
                return None
            return preface, -1, 0, 0, b""
        header = self._read(9)
        if header is None:
            return None
        length = int.from_bytes(header[:3], "big")
        kind, flags, stream = header[3], header[4], struct.unpack(">I", header[5:])[0] & 0x7FFFFFFF
        payload = self._read(length) if length else b""
        if payload is None:
            return None
        return header + payload, kind, flags, stream, payload


class HeldRepliesProxy:
    """Forwards 127.0.0.1:<port> to `target` for one client connection.

    After `hold()` the server's frames are kept instead of forwarded; `stream_ended` is set once
    the server, meanwhile, ends a stream (its trailers, or a reset). `release()` forwards them and
    returns once the client's gRPC has read them all: it sends a PING of its own after them and
    waits for the ACK, which the client sends only after handling every frame before it.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.stream_ended = threading.Event()
        self._acknowledged = threading.Event()
        self._lock = threading.Lock()
        self._held: list[bytes] | None = None
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._client: socket.socket | None = None
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        upstream = socket.create_connection(self.target)
        self._client = client
        self._sockets += [client, upstream]
        threading.Thread(target=self._from_client, args=(client, upstream), daemon=True).start()
        threading.Thread(target=self._from_server, args=(upstream, client), daemon=True).start()

    def _from_client(self, client: socket.socket, upstream: socket.socket) -> None:
        reader = _FrameReader(client, _PREFACE)
        with contextlib.suppress(OSError):
            while (frame := reader.next()) is not None:
                data, kind, flags, _, payload = frame
                if kind == _PING and flags & _ACK and payload == _OPAQUE:
                    self._acknowledged.set()  # the answer to the proxy's PING: not the server's
                    continue
                upstream.sendall(data)
        self.close()

    def _from_server(self, upstream: socket.socket, client: socket.socket) -> None:
        reader = _FrameReader(upstream)
        with contextlib.suppress(OSError):
            while (frame := reader.next()) is not None:
                data, kind, flags, stream, _ = frame
                with self._lock:
                    if self._held is None:
                        client.sendall(data)
                        continue
                    self._held.append(data)
                    ends = kind == _RST_STREAM or (kind == _HEADERS and flags & _END_STREAM)
                    if stream and ends:
                        self.stream_ended.set()
        self.close()

    def hold(self) -> None:
        with self._lock:
            self._held = []

    def release(self, timeout_s: float = 30.0) -> None:
        assert self._client is not None, "no client connected"
        with self._lock:
            held, self._held = self._held or [], None
            ping = struct.pack(">I", 8)[1:] + bytes([_PING, 0]) + struct.pack(">I", 0) + _OPAQUE
            self._client.sendall(b"".join(held) + ping)
        if not self._acknowledged.wait(timeout_s):
            raise TimeoutError("the client did not acknowledge the proxy's PING")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
