"""A gRPC service and its client (grpcio), with no generated code: the methods of
`rafael.test.Echo` take and return raw bytes. The example of examples/grpc/README.md, and the
peer of control/tests/grpc.rs.

    python3 echo.py server [PORT]      prints the port it listens on (PORT, or any free one)
    python3 echo.py client ADDR        calls the server through ADDR and prints the results
"""

import sys
from concurrent import futures

import grpc

SERVICE = "rafael.test.Echo"


def say(request, context):
    return b"echo:" + request


def count(request, context):
    for i in range(int(request.decode())):
        yield str(i).encode()


def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such order: " + request.decode())


def server():
    handlers = {
        "Say": grpc.unary_unary_rpc_method_handler(say),
        "Count": grpc.unary_stream_rpc_method_handler(count),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
    }
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = srv.add_insecure_port(f"127.0.0.1:{sys.argv[2] if len(sys.argv) > 2 else 0}")
    srv.start()
    print(port, flush=True)
    srv.wait_for_termination()


def client(addr):
    with grpc.insecure_channel(addr) as channel:
        say_rpc = channel.unary_unary(f"/{SERVICE}/Say")
        print("say", say_rpc(b"hello", timeout=10).decode())
        count_rpc = channel.unary_stream(f"/{SERVICE}/Count")
        print("count", ",".join(m.decode() for m in count_rpc(b"5", timeout=10)))
        fail_rpc = channel.unary_unary(f"/{SERVICE}/Fail")
        try:
            fail_rpc(b"42", timeout=10)
            print("fail none")
        except grpc.RpcError as error:
            print("fail", error.code().name, error.details())


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server()
    else:
        client(sys.argv[2])
