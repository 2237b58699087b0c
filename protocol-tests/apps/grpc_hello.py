"""A gRPC hello-world for the upstream TLS tests, without generated code: requests and
answers are raw bytes (UTF-8 names).

  grpc_hello.py serve PORT CERT KEY      # TLS server; prints "ready" once listening
  grpc_hello.py call TARGET METHOD NAME  # plaintext (h2c) client; prints the outcome

Methods: hello.Greeter/SayHello (unary; "missing" aborts with NOT_FOUND; trailing
metadata x-served-by), hello.Greeter/Count (server streaming: NAME is a count), hello.Greeter/Peer (the
caller's address as the server sees it).
"""
import sys
from concurrent import futures

import grpc


def say_hello(request, context):
    name = request.decode()
    if name == "missing":
        context.abort(grpc.StatusCode.NOT_FOUND, "no user called missing")
    context.set_trailing_metadata((("x-served-by", "grpc-hello"),))
    return f"Hello, {name}!".encode()


def peer(request, context):
    return context.peer().encode()


def count(request, context):
    for i in range(int(request.decode())):
        yield f"{i}".encode()


def serve(port, cert, key):
    handler = grpc.method_handlers_generic_handler(
        "hello.Greeter",
        {
            "SayHello": grpc.unary_unary_rpc_method_handler(say_hello),
            "Count": grpc.unary_stream_rpc_method_handler(count),
            "Peer": grpc.unary_unary_rpc_method_handler(peer),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    with open(cert, "rb") as c, open(key, "rb") as k:
        creds = grpc.ssl_server_credentials([(k.read(), c.read())])
    server.add_secure_port(f"127.0.0.1:{port}", creds)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def call(target, method, name):
    with grpc.insecure_channel(target) as ch:
        try:
            if method == "Count":
                rpc = ch.unary_stream("/hello.Greeter/Count")
                print(" ".join(r.decode() for r in rpc(name.encode(), timeout=10)))
            elif method == "Peer":
                print(ch.unary_unary("/hello.Greeter/Peer")(b"", timeout=10).decode())
            else:
                rpc = ch.unary_unary("/hello.Greeter/SayHello")
                reply, outcome = rpc.with_call(name.encode(), timeout=10)
                trailing = dict(outcome.trailing_metadata() or ())
                print(reply.decode(), trailing.get("x-served-by", "-"))
        except grpc.RpcError as e:
            print("ERROR", e.code().name, e.details())


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(*sys.argv[2:5])
    else:
        call(*sys.argv[2:5])
