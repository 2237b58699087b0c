"""The Flask test app served over FastCGI by flup: `flup_server.py HOST:PORT` or
`flup_server.py unix:/path.sock`."""
import sys

from flup.server.fcgi import WSGIServer

from flask_app import app

if __name__ == "__main__":
    where = sys.argv[1]
    if where.startswith("unix:"):
        bind = where[5:]
    else:
        host, port = where.rsplit(":", 1)
        bind = (host, int(port))
    WSGIServer(app, bindAddress=bind).run()
