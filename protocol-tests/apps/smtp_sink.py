"""An aiosmtpd SMTP server that appends every message it accepts to a JSON-lines file.

    smtp_sink.py PORT OUTFILE
"""
import json
import sys
import threading

from aiosmtpd.controller import Controller

PORT = int(sys.argv[1])
OUT = sys.argv[2]


class Sink:
    async def handle_DATA(self, server, session, envelope):
        with open(OUT, "a") as f:
            f.write(
                json.dumps(
                    {
                        "helo": session.host_name,
                        "from": envelope.mail_from,
                        "to": envelope.rcpt_tos,
                        "data": envelope.content.decode("utf-8", "replace"),
                    }
                )
                + "\n"
            )
        return "250 2.0.0 Ok: queued"


controller = Controller(Sink(), hostname="127.0.0.1", port=PORT)
controller.start()
threading.Event().wait()
