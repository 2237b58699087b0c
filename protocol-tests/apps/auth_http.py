"""A small nginx-style auth_http server for the mail tests.

    auth_http.py PORT LOGFILE [imap=HOST:PORT] [pop3=HOST:PORT] [smtp=HOST:PORT] [wait=N]
                 [pool=1] [override=1]

keepalive=1 answers HTTP/1.1 so clients may reuse the connection. Users are alice/secret and bob/hunter2 (as in the test Dovecot). A good login answers
Auth-Status: OK with the backend of its protocol (or, with pool=1, no Auth-Server at
all, so the proxy's own upstream picks one; the user "pooled" always gets
"Auth-Server: pool:mailstore"). With override=1, user "carol" with password "x" is let
in as alice/secret via Auth-User/Auth-Pass. A bad login answers "Invalid login or
password", with Auth-Wait: N when wait= is given, and Auth-Error-Code for SMTP. The user
"slow" makes the server sleep 30 s. Auth-Method none (SMTP relay) is OK for
recipients @example.test and "Relay access denied" (550 5.7.1) for others. Every request's headers go to LOGFILE as one JSON
line.
"""
import json
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
LOG = sys.argv[2]
OPTS = dict(a.split("=", 1) for a in sys.argv[3:])
USERS = {"alice": "secret", "bob": "hunter2", "pooled": "secret"}


class Handler(BaseHTTPRequestHandler):
    # keepalive=1: HTTP/1.1 answers with Content-Length, so a client may keep the
    # connection; otherwise HTTP/1.0 and a connection per request, as nginx expects.
    if OPTS.get("keepalive") == "1":
        protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        headers = {k: v for k, v in self.headers.items()}
        with open(LOG, "a") as f:
            f.write(
                json.dumps(
                    {"path": self.path, "headers": headers, "peer_port": self.client_address[1]}
                )
                + "\n"
            )
        user = urllib.parse.unquote(self.headers.get("Auth-User", ""))
        password = urllib.parse.unquote(self.headers.get("Auth-Pass", ""))
        protocol = self.headers.get("Auth-Protocol", "")
        if user == "slow":
            time.sleep(30)
        reply = {}
        if self.headers.get("Auth-Method") == "none":
            # relay-to-MX: the recipient decides (no open relay)
            to = urllib.parse.unquote(self.headers.get("Auth-SMTP-To", ""))
            if "@example.test>" in to:
                host, port = OPTS["smtp"].rsplit(":", 1)
                reply = {"Auth-Status": "OK", "Auth-Server": host, "Auth-Port": port}
            else:
                reply = {"Auth-Status": "Relay access denied", "Auth-Error-Code": "550 5.7.1"}
            return self.answer(reply)
        method = self.headers.get("Auth-Method")
        if method in ("cram-md5", "apop"):
            # challenge-response: check the digest against the salt, send the password
            import hashlib, hmac
            salt = urllib.parse.unquote(self.headers.get("Auth-Salt", "")).encode()
            secret = USERS.get(user, "").encode()
            if method == "cram-md5":
                want = hmac.new(secret, salt, hashlib.md5).hexdigest()
            else:
                want = hashlib.md5(salt + secret).hexdigest()
            if secret and password == want:
                host, port = OPTS[protocol].rsplit(":", 1)
                reply = {"Auth-Status": "OK", "Auth-Server": host, "Auth-Port": port,
                         "Auth-Pass": secret.decode()}
            else:
                reply = {"Auth-Status": "Invalid login or password"}
            return self.answer(reply)
        if OPTS.get("override") == "1" and user == "carol" and password == "x":
            user, password = "alice", "secret"
            reply["Auth-User"] = "alice"
            reply["Auth-Pass"] = "secret"
        if USERS.get(user) == password and password:
            reply["Auth-Status"] = "OK"
            if user == "pooled":
                reply["Auth-Server"] = "pool:mailstore"
            elif OPTS.get("pool") != "1":
                host, port = OPTS[protocol].rsplit(":", 1)
                reply["Auth-Server"] = host
                reply["Auth-Port"] = port
        else:
            reply = {"Auth-Status": "Invalid login or password"}
            if "wait" in OPTS:
                reply["Auth-Wait"] = OPTS["wait"]
            if protocol == "smtp":
                reply["Auth-Error-Code"] = "535 5.7.8"
        self.answer(reply)

    def answer(self, reply):
        self.send_response(200)
        for k, v in reply.items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
