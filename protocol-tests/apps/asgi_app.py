"""A plain ASGI app for uvicorn: echo, streaming and answers of a given size, no framework
needed."""
import hashlib
import json
import os

APP_ID = os.environ.get("APP_ID", "asgi")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        # echo, as the websockets-package server does
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                return
            if msg.get("text") is not None:
                if msg["text"].startswith("close:"):
                    await send({"type": "websocket.close", "code": int(msg["text"][6:])})
                    return
                await send({"type": "websocket.send", "text": msg["text"]})
            else:
                await send({"type": "websocket.send", "bytes": msg["bytes"]})
    path = scope["path"]
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        for i in range(100):
            await send({"type": "http.response.body", "body": b"line %d\n" % i, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/sized":
        # /sized?head=N&body=M: a header of N bytes (x-wide) and a body of M bytes
        q = dict(kv.split("=", 1) for kv in scope["query_string"].decode().split("&") if "=" in kv)
        size = int(q.get("body", "0"))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"x-wide", b"w" * int(q.get("head", "0"))),
                                (b"content-length", str(size).encode())]})
        await send({"type": "http.response.body", "body": b"m" * size})
        return
    payload = json.dumps({
        "app": APP_ID,
        "method": scope["method"],
        "path": path,
        "http_version": scope["http_version"],
        "scheme": scope.get("scheme"),
        "client_port": (scope.get("client") or [None, None])[1],
        "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
        "body_len": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
    }).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
