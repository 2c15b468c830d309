"""`gpufleet-web`: serve the HTTP API against a coordinator."""
from __future__ import annotations

import argparse

import uvicorn

from gpufleet.web.api import create_app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="gpufleet-web", description=__doc__)
    p.add_argument("--coordinator", default="127.0.0.1:50051", help="coordinator HOST:PORT")
    p.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT to serve HTTP on")
    p.add_argument("--tls-ca", default="")
    p.add_argument("--tls-cert", default="")
    p.add_argument("--tls-key", default="")
    a = p.parse_args(argv)
    host, _, port = a.listen.rpartition(":")
    uvicorn.run(create_app(a.coordinator, a.tls_ca, a.tls_cert, a.tls_key), host=host, port=int(port),
                log_level="warning")


if __name__ == "__main__":
    main()
