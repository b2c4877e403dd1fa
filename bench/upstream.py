"""A minimal upstream for ``cardless bench gateway``: it answers at once, so what is measured is
the gateway, not a service behind it. Run as ``python -m bench.upstream PORT``."""

from __future__ import annotations

import sys

import uvloop
from aiohttp import web

BODY = b'{"currency": "CNY", "available": 0, "held": 0}'


async def answer(_: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="application/json")


def main(port: int) -> None:
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", answer)
    loop = uvloop.new_event_loop()  # as every service runs (shared/service.py)
    web.run_app(app, loop=loop, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main(int(sys.argv[1]))
