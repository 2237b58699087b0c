"""A `websockets` echo server for the WebSocket tests.

Echoes every message (text or binary). A text message "close:CODE" makes the server
close with that code; "whoami" answers the request path and X-Forwarded-For the server
saw; a path ending in /forbidden is refused with 403. Usage: python ws_echo.py PORT
"""
import asyncio
import json
import sys
from http import HTTPStatus

from websockets.asyncio.server import serve


async def handler(ws):
    async for msg in ws:
        if isinstance(msg, str) and msg.startswith("close:"):
            await ws.close(int(msg.split(":", 1)[1]), "asked to")
            return
        if msg == "whoami":
            await ws.send(json.dumps({
                "path": ws.request.path,
                "x-forwarded-for": ws.request.headers.get("X-Forwarded-For"),
            }))
            continue
        await ws.send(msg)


def process_request(connection, request):
    """/ws/forbidden refuses the upgrade with a plain 403."""
    if request.path.endswith("/forbidden"):
        return connection.respond(HTTPStatus.FORBIDDEN, "forbidden\n")
    return None


async def main(port):
    async with serve(handler, "127.0.0.1", port, max_size=16 * 1024 * 1024,
                     process_request=process_request):
        await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
