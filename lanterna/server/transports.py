"""Serving the app: stdio (what desktop clients spawn) and streamable HTTP at /mcp.

HTTP binds 127.0.0.1 by default. Host and Origin headers are always checked (DNS-rebinding
protection); a bearer token is required whenever the server listens beyond loopback; request
bodies over `max_request_bytes` are refused with 413.

A client whose HTTP connection drops while its tool call runs can never get the answer (no event
store is kept to resume the stream), so each request carries an event set on disconnect, and
the tool call that sees it cancels its job to free the engine.
"""

from __future__ import annotations

import hmac
import logging

import anyio
from mcp.server.auth.provider import AccessToken
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lanterna.config import LOOPBACK_HOSTS, Settings

log = logging.getLogger("lanterna.server")

HTTP_PATH = "/mcp"
CLIENT_GONE = "lanterna.client_gone"  # ASGI scope key: an anyio.Event set when the client disconnects


class InsecureBinding(ValueError):
    pass


class StaticTokenVerifier:
    """Accepts exactly one bearer token (compared in constant time)."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def verify_token(self, token: str) -> AccessToken | None:
        if hmac.compare_digest(token.encode(), self._token):
            return AccessToken(token="", client_id="lanterna-client", scopes=[])
        return None


def check_binding(settings: Settings) -> None:
    if not settings.is_loopback and not settings.token:
        raise InsecureBinding(
            f"refusing to listen on {settings.host}: a bearer token is required beyond loopback; "
            f"pass --token TOKEN or set LANTERNA_TOKEN (or bind 127.0.0.1)")


def bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def has_port(name: str) -> bool:
    return "]:" in name if name.startswith("[") else ":" in name


def transport_security(settings: Settings) -> TransportSecuritySettings:
    """Host/Origin allow-lists: loopback names, the bound address, and `allowed_hosts`, any port."""
    names = ["127.0.0.1", "localhost", "[::1]"]
    if settings.host not in ("0.0.0.0", "::", *LOOPBACK_HOSTS):
        names.append(bracketed(settings.host))
    names += [bracketed(h) if h.count(":") > 1 else h for h in settings.allowed_hosts]
    hosts: list[str] = []
    for name in names:
        hosts += [name] if has_port(name) else [name, f"{name}:*"]
    origins = [f"{scheme}://{h}" for h in hosts for scheme in ("http", "https")]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts,
                                     allowed_origins=origins)


class DisconnectWatch:
    """ASGI middleware: puts an event in each HTTP request's scope, set once the client has gone.

    The MCP handler reads it through the request it is given (the same scope); the event is
    only ever set on the event loop, by the ASGI `receive` that reports the disconnect.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gone = anyio.Event()
        scope[CLIENT_GONE] = gone

        async def watched_receive() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
            return message

        await self.app(scope, watched_receive, send)


def run_stdio(server: MCPServer) -> None:
    # The SDK moves fd 1 onto stderr while it serves, so stray prints cannot corrupt the protocol.
    anyio.run(server.run_stdio_async)


def http_app(server: MCPServer, settings: Settings):
    check_binding(settings)
    app = server.streamable_http_app(streamable_http_path=HTTP_PATH, transport_security=transport_security(settings),
                                     host=settings.host, max_request_body_size=settings.max_request_bytes)
    return DisconnectWatch(app)


def run_http(server: MCPServer, settings: Settings) -> None:
    import uvicorn

    app = http_app(server, settings)
    log.info("serving MCP over HTTP at http://%s:%d%s (token %s)", settings.host, settings.port, HTTP_PATH,
             "required" if settings.token else "not required: loopback only")
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                            access_log=False, log_config=None)
    uvicorn.Server(config).run()
