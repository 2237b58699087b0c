"""The Flask app the protocol tests run under gunicorn (and later uWSGI/flup).

Every endpoint reports what the app saw, so tests can assert on the proxy's behaviour.
"""
import hashlib
import json
import os
import time

from flask import Flask, Response, request

app = Flask(__name__)
APP_ID = os.environ.get("APP_ID", "app")
HEALTH_FILE = os.environ.get("HEALTH_FILE", "")


@app.route("/")
def index():
    return f"hello from {APP_ID}\n"


@app.route("/echo", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
def echo():
    body = request.get_data()
    return Response(
        json.dumps(
            {
                "app": APP_ID,
                "method": request.method,
                "path": request.path,
                "query": request.query_string.decode("latin-1"),
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body_len": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(),
            }
        ),
        mimetype="application/json",
    )


@app.route("/status/<int:code>")
def status(code):
    return Response(f"status {code}\n", status=code)


@app.route("/headers")
def headers():
    """Answers with one header per query argument, named exactly as written there."""
    r = Response("headers\n")
    for k, v in request.args.items():
        r.headers[k] = v
    return r


@app.route("/app/login")
def login():
    # what an app mounted at / sets when the proxy serves it under /app/
    r = Response("logged in\n")
    r.headers.add("Set-Cookie", "sessionid=abc; Path=/app/; HttpOnly")
    r.headers.add("Set-Cookie", "csrftoken=x1; Domain=localhost; Path=/")
    r.headers.add("Set-Cookie", "theme=dark; Path=/app/prefs; SameSite=Strict")
    return r


@app.route("/cookies")
def cookies():
    r = Response("cookies\n")
    r.headers.add("Set-Cookie", "a=1; Path=/")
    r.headers.add("Set-Cookie", "b=2; Path=/")
    return r


@app.route("/stream")
def stream():
    n = int(request.args.get("n", "5"))
    size = int(request.args.get("size", "1024"))
    delay = float(request.args.get("delay", "0"))

    def gen():
        for i in range(n):
            yield (b"%06d" % i) + b"x" * (size - 6)
            if delay:
                time.sleep(delay)

    return Response(gen(), mimetype="application/octet-stream")


@app.route("/slow")
def slow():
    time.sleep(float(request.args.get("secs", "2")))
    return f"slow done from {APP_ID}\n"


@app.route("/healthz")
def healthz():
    if HEALTH_FILE and os.path.exists(HEALTH_FILE):
        return Response("sick\n", status=503)
    return "ok\n"


@app.route("/events")
def events():
    """Server-sent events: one event, then a second once the file $SSE_GATE exists."""
    gate = os.environ.get("SSE_GATE", "")

    def gen():
        yield "data: first\n\n"
        for _ in range(3000):
            if not gate or os.path.exists(gate):
                break
            time.sleep(0.01)
        yield "data: second\n\n"

    return Response(gen(), mimetype="text/event-stream")


# --- for the uwsgi / FastCGI gateway tests ---


@app.route("/env", methods=["GET", "POST", "HEAD", "PUT", "DELETE"])
@app.route("/env/<path:rest>", methods=["GET", "POST", "HEAD", "PUT", "DELETE"])
def env(rest=None):
    """The CGI variables the app server passed on (upper-case str keys of the environ)."""
    seen = {
        k: v
        for k, v in request.environ.items()
        if isinstance(k, str) and k.isupper() and isinstance(v, str)
    }
    body = request.get_data()
    seen["_body_len"] = str(len(body))
    seen["_body_sha256"] = hashlib.sha256(body).hexdigest()
    return Response(json.dumps(seen, sort_keys=True), mimetype="application/json")


@app.route("/form", methods=["POST"])
def form():
    return Response(json.dumps(request.form.to_dict(flat=False)), mimetype="application/json")


@app.route("/redirect")
def redirect_():
    return Response("", status=302, headers={"Location": "/echo?from=redirect"})


@app.route("/json")
def json_items():
    """A JSON list of `n` items (with Content-Length), compressible."""
    n = int(request.args.get("n", "50"))
    items = [{"id": i, "name": f"item {i}", "tags": ["a", "b", "c"]} for i in range(n)]
    return Response(json.dumps(items), mimetype="application/json")


@app.route("/text-stream")
def text_stream():
    """`n` lines of text streamed without Content-Length."""
    n = int(request.args.get("n", "2000"))

    def gen():
        for i in range(n):
            yield f"line {i} of a streamed text answer\n"

    return Response(gen(), mimetype="text/plain")


@app.route("/big")
def big():
    """`mb` MiB streamed in 64 KiB pieces, without Content-Length."""
    mb = int(request.args.get("mb", "10"))
    piece = bytes(range(256)) * 256

    def gen():
        for _ in range(mb * 16):
            yield piece

    return Response(gen(), mimetype="application/octet-stream")


@app.route("/crash")
def crash():
    """Promises 1 MB, sends 64 KiB, then dies (CRASH=exit: the process; else raises)."""

    def gen():
        yield b"x" * 65536
        if os.environ.get("CRASH") == "exit":
            os._exit(1)
        raise RuntimeError("crash in the middle of the response")

    return Response(gen(), headers={"Content-Length": "1000000"}, mimetype="text/plain")


@app.route("/u/<path:rest>")
def unicode_path(rest):
    return Response(
        json.dumps({"rest": rest, "args": request.args.to_dict(flat=False)}),
        mimetype="application/json",
    )


COUNT_DIR = os.path.join(os.environ.get("TMPDIR", "/tmp"), "portico-cache-test")


def bump(name):
    """Counts requests per name in a file (shared by every worker process)."""
    import fcntl

    os.makedirs(COUNT_DIR, exist_ok=True)
    with open(os.path.join(COUNT_DIR, name), "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        n = int(f.read() or "0") + 1
        f.seek(0)
        f.truncate()
        f.write(str(n))
        return n


@app.route("/cached/<tag>", methods=["GET", "HEAD", "POST"])
def cached(tag):
    """For the cache tests: counts the requests that reach the app (file TAG under
    COUNT_DIR; 304s count in TAG.304) and answers as the query says: cc (Cache-Control),
    etag (an ETag, 304 to a matching If-None-Match), lm (a Last-Modified), vary, cookie,
    status, sleep (ms), size (body bytes), expires (seconds from now)."""
    q = request.args
    if q.get("sleep"):
        time.sleep(int(q["sleep"]) / 1000)
    etag = q.get("etag")
    if etag and request.headers.get("If-None-Match") == f'"{etag}"':
        n = bump(tag + ".304")
        resp = Response(status=304)
        resp.headers["ETag"] = f'"{etag}"'
        if q.get("cc"):
            resp.headers["Cache-Control"] = q["cc"]
        resp.headers["X-Revalidations"] = str(n)
        return resp
    n = bump(tag)
    size = int(q.get("size", "0"))
    body = f"count={n} tag={tag} ae={request.headers.get('Accept-Encoding', '')}\n"
    if size:
        body = (body * (size // len(body) + 1))[:size]
    resp = Response(body, status=int(q.get("status", "200")), mimetype="text/plain")
    if q.get("cc"):
        resp.headers["Cache-Control"] = q["cc"]
    if etag:
        resp.headers["ETag"] = f'"{etag}"'
    if q.get("lm"):
        resp.headers["Last-Modified"] = q["lm"]
    if q.get("vary"):
        resp.headers["Vary"] = q["vary"]
    if q.get("cookie"):
        resp.set_cookie("session", "abc")
    if q.get("expires"):
        from email.utils import formatdate

        resp.headers["Expires"] = formatdate(time.time() + int(q["expires"]), usegmt=True)
    resp.headers["X-Count"] = str(n)
    return resp
