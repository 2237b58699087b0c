"""An auth_request service in the shape of oauth2-proxy's /oauth2/auth: the answer
depends on the X-Token header of the request it is asked about.

  auth_service.py PORT    # prints "ready" once listening

good -> 200 with X-User: alice (and X-Seen-Uri: the X-Original-URI it was told)
bad  -> 403; boom -> 500; missing -> 401 with WWW-Authenticate: Bearer realm="portico-test"
"""
import http.server
import sys


class Auth(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        token = self.headers.get("X-Token")
        if token == "good":
            self.send_response(200)
            self.send_header("X-User", "alice")
            self.send_header("X-Seen-Uri", self.headers.get("X-Original-URI", "-"))
        elif token == "bad":
            self.send_response(403)
        elif token == "boom":
            self.send_response(500)
        else:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Bearer realm="portico-test"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_GET
    do_HEAD = do_GET

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Auth)
print("ready", flush=True)
server.serve_forever()
