"""IMAP load for the mail benchmark (asyncio, raw protocol).

    imap_bench.py rate HOST PORT SECONDS CONCURRENCY
        LOGIN + SELECT INBOX + LOGOUT sessions, CONCURRENCY at a time, for SECONDS;
        prints "sessions N failed F rate R" (sessions per second).
    imap_bench.py idle HOST PORT N
        opens N sessions and logs each in, prints "ready N" (or "ready K" with how
        many made it), then holds them until stdin closes.
"""
import asyncio
import sys
import time

USER, PASS = b"alice", b"secret"


async def login(host, port):
    r, w = await asyncio.open_connection(host, port)
    await r.readline()
    w.write(b"a1 LOGIN " + USER + b" " + PASS + b"\r\n")
    while True:
        line = await r.readline()
        if not line:
            raise ConnectionError("closed during login")
        if line.startswith(b"a1 "):
            if not line.startswith(b"a1 OK"):
                raise ConnectionError(line)
            return r, w


async def session(host, port):
    r, w = await login(host, port)
    w.write(b"a2 SELECT INBOX\r\n")
    while not (await r.readline()).startswith(b"a2 "):
        pass
    w.write(b"a3 LOGOUT\r\n")
    while True:
        line = await r.readline()
        if not line or line.startswith(b"a3 "):
            break
    w.close()


async def rate(host, port, seconds, concurrency):
    done = failed = 0
    deadline = time.monotonic() + seconds

    async def worker():
        nonlocal done, failed
        while time.monotonic() < deadline:
            try:
                await session(host, port)
                done += 1
            except Exception:
                failed += 1

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    took = time.monotonic() - start
    print(f"sessions {done} failed {failed} rate {done / took:.0f}")


async def idle(host, port, n):
    held = []
    sem = asyncio.Semaphore(200)

    async def one():
        async with sem:
            try:
                held.append(await login(host, port))
            except Exception:
                pass

    await asyncio.gather(*(one() for _ in range(n)))
    print(f"ready {len(held)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "rate":
        asyncio.run(rate(host, port, float(sys.argv[4]), int(sys.argv[5])))
    else:
        asyncio.run(idle(host, port, int(sys.argv[4])))
