"""`gpufleet-web`: serve the HTTP API against a coordinator."""
from __future__ import annotations

import argparse

import uvicorn

from gpufleet import auth
from gpufleet.web.api import create_app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="gpufleet-web", description=__doc__)
    p.add_argument("--coordinator", default="127.0.0.1:50051", help="coordinator HOST:PORT")
    p.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT to serve HTTP on")
    p.add_argument("--tls-ca", default="")
    p.add_argument("--tls-cert", default="")
    p.add_argument("--tls-key", default="")
    p.add_argument("--token-file", default="",
                   help="a viewer token for the live-update poller (or GPUFLEET_TOKEN / GPUFLEET_TOKEN_FILE)")
    a = p.parse_args(argv)
    host, _, port = a.listen.rpartition(":")
    app = create_app(a.coordinator, a.tls_ca, a.tls_cert, a.tls_key, auth.load_token(a.token_file))
    uvicorn.run(app, host=host, port=int(port), log_level="warning")


if __name__ == "__main__":
    main()
