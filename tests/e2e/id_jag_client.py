"""The official Python MCP SDK's ID-JAG client (SEP-990) through the proxy.

Reads one JSON object on stdin:
  mcp_url         the MCP server behind the proxy (e.g. http://localhost:PORT/mcp)
  issuer          the proxy's issuer (its authorization server)
  client_id, client_secret          the client pre-registered at the proxy ([[clients]])
  idp_token_endpoint                the company provider's token endpoint
  idp_client_id, idp_client_secret  the same application at the provider
  id_token        the person's id_token from signing in at the provider
  auth_method     client_secret_post (default) or client_secret_basic

Leg 1 (RFC 8693 at the provider: id_token -> ID-JAG) is the application's
own, as the SDK leaves it to the deployment; leg 2 (RFC 7523 jwt-bearer at
the proxy) and the MCP calls are the SDK's IdentityAssertionOAuthProvider.
Prints one JSON line: {"whoami": <tool result text>, "hops": [...]} where
hops are the HTTP exchanges as they went over the wire (no secrets).
"""

import asyncio
import json
import sys

import httpx2
from mcp.client.auth.extensions.identity_assertion import IdentityAssertionOAuthProvider
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_JAG = "urn:ietf:params:oauth:token-type:id-jag"
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
SECRET_FIELDS = {"client_secret", "assertion", "subject_token", "access_token", "refresh_token"}

hops: list[dict] = []


def redact_form(body: bytes) -> dict:
    from urllib.parse import parse_qsl

    return {k: ("<redacted>" if k in SECRET_FIELDS else v) for k, v in parse_qsl(body.decode())}


def redact_json(text: str):
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, dict):
        return {k: ("<redacted>" if k in SECRET_FIELDS else v) for k, v in value.items()}
    return "<json>"


async def on_request(request: httpx2.Request) -> None:
    hop = {"method": request.method, "url": str(request.url)}
    auth = request.headers.get("authorization", "")
    if auth:
        hop["authorization"] = auth.split(" ")[0] + " <redacted>"
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        hop["form"] = redact_form(request.content)
    elif request.method == "POST" and request.content:
        try:
            hop["jsonrpc_method"] = json.loads(request.content).get("method")
        except ValueError:
            pass
    hops.append(hop)


async def on_response(response: httpx2.Response) -> None:
    hop = next((h for h in reversed(hops) if h["url"] == str(response.request.url) and "status" not in h), None)
    if hop is None:
        return
    hop["status"] = response.status_code
    if response.headers.get("content-type", "").startswith("application/json") and "/.well-known/" not in hop["url"]:
        await response.aread()
        body = redact_json(response.text)
        if body is not None:
            hop["response"] = body


class MemoryStorage:
    def __init__(self) -> None:
        self.tokens = None
        self.client_info = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens) -> None:
        self.tokens = tokens

    async def get_client_info(self):
        return self.client_info

    async def set_client_info(self, client_info) -> None:
        self.client_info = client_info


def describe(e: BaseException) -> str:
    """An exception and, for a group (anyio's task groups raise them), every
    exception inside it: the group's own message says only how many."""
    text = f"{type(e).__name__}: {e}"
    inner = getattr(e, "exceptions", None)
    if inner:
        text += " [" + "; ".join(describe(x) for x in inner) + "]"
    return text


async def main() -> None:
    cfg = json.loads(sys.stdin.read())
    hooks = {"request": [on_request], "response": [on_response]}

    async def fetch_id_jag(audience: str, resource: str) -> str:
        # Leg 1, the application's own: RFC 8693 token exchange at the provider.
        async with httpx2.AsyncClient(event_hooks=hooks) as idp:
            r = await idp.post(
                cfg["idp_token_endpoint"],
                data={
                    "grant_type": TOKEN_EXCHANGE,
                    "requested_token_type": ID_JAG,
                    "subject_token": cfg["id_token"],
                    "subject_token_type": ID_TOKEN,
                    "audience": audience,
                    "resource": resource,
                },
                auth=(cfg["idp_client_id"], cfg["idp_client_secret"]),
            )
            if r.status_code != 200:
                raise RuntimeError(f"token exchange at the provider failed: {r.status_code} {r.text}")
            body = r.json()
            assert body["issued_token_type"] == ID_JAG, body
            return body["access_token"]

    auth = IdentityAssertionOAuthProvider(
        server_url=cfg["mcp_url"],
        storage=MemoryStorage(),
        client_id=cfg["client_id"],
        client_secret=cfg["client_secret"],
        issuer=cfg["issuer"],
        assertion_provider=fetch_id_jag,
        token_endpoint_auth_method=cfg.get("auth_method", "client_secret_post"),
    )
    async with httpx2.AsyncClient(auth=auth, event_hooks=hooks, timeout=30) as http:
        async with streamable_http_client(cfg["mcp_url"], http_client=http) as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write) as session:
                await session.initialize()
                result = await session.call_tool("whoami", {})
                text = "".join(getattr(c, "text", "") for c in result.content)
    print(json.dumps({"whoami": text, "hops": hops}))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except BaseException as e:  # report every failure as one JSON line
        print(json.dumps({"error": describe(e), "hops": hops}))
        sys.exit(1)
