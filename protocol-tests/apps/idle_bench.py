"""Idle keep-alive connections for the memory benchmark.

`idle_bench.py h1|h2|none PORT N PID...`: prints the summed RSS (KiB) of the PIDs,
opens N connections to 127.0.0.1:PORT — each sends one GET and reads its answer
(`h1`: HTTP/1.1 keep-alive; `h2`: h2 prior knowledge, the h2 package; `tls`: HTTP/1.1
keep-alive over TLS, the certificate not checked; `none`: connects and sends nothing) — then, with all N open and idle, prints the RSS again one second
later and once more after SETTLE seconds (env, default 12: an allocator that gives
freed pages back after a decay time has done so), and the number of connections that
got their answer; closes them."""
import os
import asyncio
import ssl
import sys

import h2.config
import h2.connection
import h2.events

from rss import rss_kib


def client_tls():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def h1(port, tls=None):
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    w.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await r.readexactly(length)
    return (r, w), head.startswith(b"HTTP/1.1 200")


async def h2c(port):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    c.send_headers(1, [(":method", "GET"), (":path", "/"), (":scheme", "http"),
                       (":authority", "bench")], end_stream=True)
    w.write(c.data_to_send())
    ok = False
    done = False
    while not done:
        data = await r.read(65536)
        if not data:
            break
        for ev in c.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                ok = dict(ev.headers).get(b":status") == b"200"
            if isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                done = True
            if isinstance(ev, h2.events.DataReceived):
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        w.write(c.data_to_send())
    return (r, w), ok


async def bare(port):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    return (r, w), True


async def main(kind, port, n, pids):
    before = rss_kib(pids)
    tls = client_tls()
    opener = {"h1": h1, "h2": h2c, "none": bare, "tls": lambda p: h1(p, tls)}[kind]
    conns = []
    ok = 0
    batch = 200
    for i in range(0, n, batch):
        got = await asyncio.gather(*(opener(port) for _ in range(min(batch, n - i))))
        conns += [c for c, _ in got]
        ok += sum(1 for _, good in got if good)
    await asyncio.sleep(1)
    after = rss_kib(pids)
    await asyncio.sleep(max(0.0, float(os.environ.get("SETTLE", "12")) - 1))
    settled = rss_kib(pids)
    print(before, after, settled, ok, flush=True)
    for _, w in conns:
        w.close()


asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]))
