"""An aiosmtpd SMTP server that appends every message it accepts to a JSON-lines file.

    smtp_sink.py PORT OUTFILE [auth]

With "auth" it requires AUTH (PLAIN or LOGIN) as alice/secret before MAIL.
"""
import json
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

PORT = int(sys.argv[1])
OUT = sys.argv[2]


class Sink:
    async def handle_DATA(self, server, session, envelope):
        with open(OUT, "a") as f:
            f.write(
                json.dumps(
                    {
                        "helo": session.host_name,
                        "authenticated": bool(session.authenticated),
                        "from": envelope.mail_from,
                        "to": envelope.rcpt_tos,
                        "data": envelope.content.decode("utf-8", "replace"),
                    }
                )
                + "\n"
            )
        return "250 2.0.0 Ok: queued"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"alice",
        b"secret",
    )
    return AuthResult(success=ok)


if len(sys.argv) > 3 and sys.argv[3] == "auth":
    controller = Controller(
        Sink(),
        hostname="127.0.0.1",
        port=PORT,
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=False,
    )
else:
    controller = Controller(Sink(), hostname="127.0.0.1", port=PORT)
controller.start()
threading.Event().wait()
