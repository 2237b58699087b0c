"""WebSocket benchmark client.

`idle URL N PID...`: prints the summed RSS (KiB) of the PIDs, opens N sockets, prints
the RSS again, closes them. `echo URL C SECONDS`: C sockets doing round trips; prints
round trips per second."""
import asyncio
import sys
import time

from websockets.asyncio.client import connect

from rss import rss_kib


async def idle(url, n, pids):
    before = rss_kib(pids)
    socks = []
    for i in range(n):
        ws = await connect(url, ping_interval=None, open_timeout=180)
        socks.append(ws)
    await asyncio.sleep(1)
    after = rss_kib(pids)
    print(before, after, flush=True)
    for ws in socks:
        await ws.close()


async def echo(url, c, seconds):
    count = 0
    stop = time.monotonic() + seconds

    async def one():
        nonlocal count
        async with connect(url, ping_interval=None) as ws:
            while time.monotonic() < stop:
                await ws.send("ping")
                await ws.recv()
                count += 1

    await asyncio.gather(*(one() for _ in range(c)))
    print(f"{count / seconds:.0f}", flush=True)


if sys.argv[1] == "idle":
    asyncio.run(idle(sys.argv[2], int(sys.argv[3]), sys.argv[4:]))
else:
    asyncio.run(echo(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
