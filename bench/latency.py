"""A TCP proxy that delays every byte by a fixed time in each direction: a remote server, here.

The benchmark's S3 server runs on this machine and answers in about a
millisecond; a real endpoint is a network away.  ``--s3-latency MS`` puts this
proxy in front of the server for every S3 target, so the same workloads also
show what a round trip costs each tool.  It runs as its own process (its CPU
time is nobody's column in the report), on asyncio: each direction of a
connection forwards what it read once its delay is over, in order.

    python bench/latency.py LISTEN_PORT UPSTREAM_PORT DELAY_SECONDS
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

CHUNK = 1 << 16
#: Chunks in flight per direction of a connection.
QUEUED = 64


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Forward one direction: each chunk once its delay is over, in order; an end of stream is passed
    on as a half-close, so the other direction's answer still gets through."""
    # Bounded: a sender that cannot keep up slows the reading side, as a network would.
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUED)

    async def forward() -> None:
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(forward())
    try:
        while not sender.done():
            data = await reader.read(CHUNK)
            await queue.put((time.monotonic() + delay, data))
            if not data:
                break
        await sender
    except OSError:
        sender.cancel()


async def _serve(listen: int, upstream: int, delay: float) -> None:
    async def connection(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", upstream)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(
            _pump(client_r, server_w, delay), _pump(server_r, client_w, delay), return_exceptions=True
        )
        server_w.close()
        client_w.close()

    server = await asyncio.start_server(connection, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


class LatencyProxy:
    """The proxy as a child process: ``endpoint`` is the URL to use instead of the server's."""

    def __init__(self, listen: int, upstream: int, delay: float) -> None:
        self.listen = listen
        self.delay = delay
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), str(listen), str(upstream), str(delay)]
        )

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.listen}"

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Return once the proxy accepts connections; raise if it does not within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.listen), timeout=1.0).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the latency proxy on port {self.listen} did not start") from None
                time.sleep(0.05)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
