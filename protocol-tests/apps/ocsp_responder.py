"""An OCSP responder on loopback: openssl's own responder logic (`openssl ocsp -index
... -reqin ... -respout ...`, one run per request) behind an HTTP server bound to
127.0.0.1 (`openssl ocsp -port` binds every interface).

usage: ocsp_responder.py PORT DIR
DIR holds index.txt (openssl ca's format), ca.pem, and the signer as signer.pem /
signer.key (read at each request, so a test can swap them). Every request is counted
in DIR/requests (one line each).
"""

import os
import subprocess
import sys
import tempfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
DIR = sys.argv[2]


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        with open(os.path.join(DIR, "requests"), "a") as f:
            f.write("%s %s\n" % (self.headers.get("Content-Type"), len(body)))
        with tempfile.TemporaryDirectory() as tmp:
            req = os.path.join(tmp, "req.der")
            resp = os.path.join(tmp, "resp.der")
            with open(req, "wb") as f:
                f.write(body)
            p = lambda name: os.path.join(DIR, name)
            run = subprocess.run(
                ["openssl", "ocsp", "-index", p("index.txt"), "-CA", p("ca.pem"),
                 "-rsigner", p("signer.pem"), "-rkey", p("signer.key"),
                 "-reqin", req, "-respout", resp, "-nmin", "10"],
                capture_output=True,
            )
            if run.returncode != 0 or not os.path.exists(resp):
                self.send_response(500)
                self.end_headers()
                self.wfile.write(run.stderr)
                return
            with open(resp, "rb") as f:
                der = f.read()
        self.send_response(200)
        self.send_header("Content-Type", "application/ocsp-response")
        self.send_header("Content-Length", str(len(der)))
        self.end_headers()
        self.wfile.write(der)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
