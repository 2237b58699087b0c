"""WebSocket client scenarios for the protocol tests, with the `websockets` package.

Usage: python ws_client.py URL SCENARIO; prints one JSON object with what it saw.
"""
import asyncio
import json
import sys

from websockets.asyncio.client import connect as aconnect
from websockets.sync.client import connect

URL, SCENARIO = sys.argv[1], sys.argv[2]
MAX = 16 * 1024 * 1024


def echo():
    out = {}
    with connect(URL, max_size=MAX) as ws:
        ws.send("héllo")
        out["text"] = ws.recv()
        ws.send(b"\x00\xffbinary")
        out["binary"] = ws.recv().hex()
        big = bytes(range(256)) * (4 * 1024 * 1024 // 256)
        ws.send(big)
        out["big_ok"] = ws.recv() == big
        ws.send(iter(["frag", "mented", " message"]))
        out["fragmented"] = ws.recv()
        pong = ws.ping(b"are you there")
        out["pong"] = pong.wait(timeout=10)
        ws.send("whoami")
        out["whoami"] = json.loads(ws.recv())
        ws.close(4002, "client says bye")
        out["client_close_code"] = ws.close_code
    with connect(URL) as ws:
        ws.send("close:4001")
        try:
            ws.recv(timeout=10)
        except Exception:
            pass
        out["server_close_code"] = ws.close_code
    return out


def wait_for_close():
    """Connects, proves the tunnel works, then waits for the other side to end it."""
    with connect(URL) as ws:
        ws.send("ready?")
        first = ws.recv()
        print(json.dumps({"open": first}), flush=True)
        try:
            while True:
                ws.recv(timeout=60)
        except Exception as e:
            return {"ended": type(e).__name__, "code": ws.close_code}


def hold_and_echo():
    """Opens a socket, says so, waits for a line on stdin, then checks it still echoes."""
    with connect(URL) as ws:
        ws.send("before")
        before = ws.recv()
        print(json.dumps({"open": before}), flush=True)
        sys.stdin.readline()
        ws.send("after")
        return {"before": before, "after": ws.recv(timeout=10)}


async def many(n):
    """Opens n sockets at once, then echoes one message on each."""
    socks = [aconnect(URL) for _ in range(n)]
    opened = [await s.__aenter__() for s in socks]
    for i, ws in enumerate(opened):
        await ws.send(f"socket {i}")
    answers = [await ws.recv() for ws in opened]
    ok = sum(1 for i, a in enumerate(answers) if a == f"socket {i}")
    for s in socks:
        await s.__aexit__(None, None, None)
    return {"ok": ok}


if SCENARIO == "echo":
    result = echo()
elif SCENARIO == "wait_for_close":
    result = wait_for_close()
elif SCENARIO == "hold_and_echo":
    result = hold_and_echo()
elif SCENARIO.startswith("many:"):
    result = asyncio.run(many(int(SCENARIO.split(":")[1])))
else:
    raise SystemExit(f"unknown scenario {SCENARIO}")
print(json.dumps(result), flush=True)
