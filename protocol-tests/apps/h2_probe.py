"""An h2 client that sends what a test asks for, malformed or not, and reports what came back.

    python h2_probe.py HOST PORT SCRIPT_JSON

SCRIPT_JSON: {"streams": [{"headers": [[name, value], ...], "data": "text", "pause": 0.0}],
              "initial_window_size": 65535, "window_updates": true, "wait": 10.0,
              "check_validation": false, "sequential": false, "keep_bodies": false}
Each stream is opened in order (after `pause` seconds; with "sequential": true, only once
the stream before it ended or was reset, all on the one connection); headers are sent exactly as given
(no validation, no lower-casing), `data` (if any) as DATA with END_STREAM. With
"window_updates": false the client never opens its receive windows (a client that stops
reading). The probe waits until every stream ended or was reset, or the connection got
GOAWAY, or `wait` seconds passed, and prints JSON: {"streams": {"1": {"status": 200,
"headers": {...}, "body": N, "reset": null|code, "ended": true}} (with "keep_bodies":
true also "text", the body as latin-1), "goaway": null|code, "closed": bool}.
"""
import json
import socket
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.settings


def main():
    host, port, script = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    cfg = h2.config.H2Configuration(
        client_side=True,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
        header_encoding="latin-1",
    )
    conn = h2.connection.H2Connection(config=cfg)
    conn.local_settings = h2.settings.Settings(
        client=True,
        initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: script.get("initial_window_size", 65535),
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        },
    )
    sock = socket.create_connection((host, port), timeout=5)
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    updates = script.get("window_updates", True)
    results = {}
    state = {"goaway": None, "closed": False}
    deadline = time.time() + script.get("wait", 10.0)

    def finished(sids):
        return all(results[s]["ended"] or results[s]["reset"] is not None for s in sids)

    def pump(sids):
        """Reads and answers frames until the streams `sids` ended or were reset, the
        connection got GOAWAY or closed, or the deadline passed."""
        sock.settimeout(0.2)
        while time.time() < deadline and state["goaway"] is None and not state["closed"]:
            if finished(sids):
                return
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                state["closed"] = True
                return
            if not chunk:
                state["closed"] = True
                return
            for ev in conn.receive_data(chunk):
                r = results.get(getattr(ev, "stream_id", None))
                if isinstance(ev, h2.events.ResponseReceived):
                    hs = {str(k): str(v) for k, v in ev.headers}
                    r["status"] = int(hs.get(":status", "0"))
                    r["headers"] = hs
                elif isinstance(ev, h2.events.DataReceived):
                    r["body"] += len(ev.data)
                    if script.get("keep_bodies"):
                        r["text"] = r.get("text", "") + ev.data.decode("latin-1")
                    if updates:
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    r["ended"] = True
                elif isinstance(ev, h2.events.StreamReset):
                    if r is not None:
                        r["reset"] = int(ev.error_code)
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    state["goaway"] = int(ev.error_code)
            out = conn.data_to_send()
            if out:
                try:
                    sock.sendall(out)
                except OSError:
                    state["closed"] = True
                    return

    for spec in script["streams"]:
        time.sleep(spec.get("pause", 0.0))
        sid = conn.get_next_available_stream_id()
        data = spec.get("data")
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in spec["headers"]]
        conn.send_headers(sid, headers, end_stream=data is None)
        if data is not None:
            body = data.encode()
            step = conn.max_outbound_frame_size
            for at in range(0, max(len(body), 1), step):
                conn.send_data(sid, body[at:at + step], end_stream=at + step >= len(body))
        sock.sendall(conn.data_to_send())
        results[sid] = {"status": None, "headers": {}, "body": 0, "reset": None, "ended": False}
        if script.get("sequential"):
            pump([sid])
    pump(list(results))
    goaway, closed = state["goaway"], state["closed"]
    print(json.dumps({"streams": {str(k): v for k, v in results.items()}, "goaway": goaway, "closed": closed}))


if __name__ == "__main__":
    main()
