"""The official MCP Python SDK (PyPI `mcp`) as a client of Nexus's MCP server.

    mcp_client.py http URL TOKEN OTHER_TOKEN
    mcp_client.py stdio NEXUS_BIN ENDPOINT TOKEN
    mcp_client.py call URL TOKEN TOOL ARGS_JSON   (prints the tool's output as JSON)
    mcp_client.py refused URL TOKEN TOOL ARGS_JSON (the call is refused: PermissionDenied)
    mcp_client.py listen URL TOKEN NEXUS_BIN ENDPOINT TOOL
        (prints "listening", then waits to be told the tools changed and to find TOOL listed)

Over either transport: lists the tools, remembers a memory and recalls it by a paraphrase,
gets an error (not a crash) for an unknown tool and for invalid arguments, and reads a
memory as a resource (nexus://memory/NAMESPACE/KEY). Over HTTP
also: no token is refused (401), and another tenant's token does not see the memory.
Prints one line per check; exits non-zero on the first failure.
"""

import asyncio
import json
import sys

import httpx2
import mcp
from mcp.client.streamable_http import streamable_http_client


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        sys.exit(1)


def output_of(result):
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)


async def exercise(client, marker):
    tools = await client.list_tools()
    names = {t.name for t in tools.tools}
    check({"echo", "memory.remember", "memory.recall", "http.request"} <= names,
          f"lists Nexus's tools ({len(names)})")
    recall_tool = next(t for t in tools.tools if t.name == "memory.recall")
    check(recall_tool.input_schema.get("required") == ["query"], "with their input schemas")
    echoed = await client.call_tool("echo", {"text": "hi"})
    check(not echoed.is_error and output_of(echoed) == {"text": "hi"}, "echo")
    remembered = await client.call_tool(
        "memory.remember",
        {"text": f"The {marker} space mission was postponed until next spring because of a fuel leak.",
         "namespace": marker})
    check(not remembered.is_error, "remembers a memory")
    memory_id = output_of(remembered)["id"]
    recalled = await client.call_tool(
        "memory.recall", {"query": "was the rocket launch delayed?", "namespace": marker, "k": 3})
    hits = output_of(recalled)["hits"]
    check(not recalled.is_error and hits and hits[0]["id"] == memory_id,
          "recalls it by a paraphrase")
    try:
        unknown = await client.call_tool("no.such_tool", {})
        check(unknown.is_error, "an unknown tool is an error result")
    except mcp.MCPError as e:
        check("not found" in str(e), f"an unknown tool is a protocol error ({e})")
    invalid = await client.call_tool("memory.put", {"namespace": "n", "key": 7, "value": 1})
    text = invalid.content[0].text if invalid.content else ""
    check(invalid.is_error and "args.key" in text, f"invalid arguments are an error naming the field ({text[:80]})")
    # Resources: memories and conversations as URI templates, read through memory.get.
    templates = await client.list_resource_templates()
    uris = {t.uri_template for t in templates.resource_templates}
    check({"nexus://memory/{namespace}/{key}", "nexus://conversation/{conversation_id}"} <= uris,
          "lists the resource templates")
    put = await client.call_tool("memory.put", {"namespace": marker, "key": "pref/1", "value": {"tea": "green"}})
    check(not put.is_error, "puts a memory")
    read = await client.read_resource(f"nexus://memory/{marker}/pref%2F1")
    body = json.loads(read.contents[0].text)
    check(body["value"] == {"tea": "green"}, "reads it as a resource")
    try:
        await client.read_resource(f"nexus://memory/{marker}/absent")
        check(False, "a missing memory is an error")
    except mcp.MCPError as e:
        check("not found" in str(e).lower(), f"a missing memory is a protocol error ({e})")
    still = await client.call_tool("echo", {"text": "still here"})
    check(not still.is_error, "and the server keeps serving")
    return memory_id


async def http(url, token, other_token):
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as h:
        async with mcp.Client(streamable_http_client(url, http_client=h)) as client:
            memory_id = await exercise(client, "http")
    # No token: 401 with the protected-resource metadata named.
    async with httpx2.AsyncClient(timeout=30) as h:
        r = await h.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                         headers={"Accept": "application/json, text/event-stream"})
        check(r.status_code == 401, f"no token: {r.status_code}")
        check("resource_metadata=" in r.headers.get("www-authenticate", ""),
              "WWW-Authenticate names the resource metadata")
        meta_url = r.headers["www-authenticate"].split('resource_metadata="')[1].split('"')[0]
        meta = (await h.get(meta_url)).json()
        check(meta["resource"].endswith("/mcp"), "the protected-resource metadata is served")
    # Another tenant: the same tools, none of the first tenant's memories.
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {other_token}"}, timeout=30) as h:
        async with mcp.Client(streamable_http_client(url, http_client=h)) as client:
            recalled = await client.call_tool(
                "memory.recall", {"query": "was the rocket launch delayed?", "namespace": "http"})
            hits = output_of(recalled).get("hits", []) if not recalled.is_error else []
            check(all(h["id"] != memory_id for h in hits), "another tenant does not see it")
    async with httpx2.AsyncClient(headers={"Authorization": "Bearer nxk_0000000000000000_forged"}, timeout=30) as h:
        r = await h.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                         headers={"Accept": "application/json, text/event-stream"})
        check(r.status_code == 401, f"a forged token: {r.status_code}")


async def stdio(nexus_bin, endpoint, token):
    params = mcp.StdioServerParameters(
        command=nexus_bin, args=["mcp"], env={"NEXUS_ENDPOINT": endpoint, "NEXUS_TOKEN": token})
    async with mcp.Client(params) as client:
        await exercise(client, "stdio")


async def call(url, token, tool, args):
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as h:
        async with mcp.Client(streamable_http_client(url, http_client=h)) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            check(tool in names, f"{tool} is listed")
            result = await client.call_tool(tool, json.loads(args))
            check(not result.is_error, f"{tool} answered")
            print(json.dumps(output_of(result)), flush=True)


async def refused(url, token, tool, args):
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as h:
        async with mcp.Client(streamable_http_client(url, http_client=h)) as client:
            result = await client.call_tool(tool, json.loads(args))
            text = result.content[0].text if result.content else ""
            check(result.is_error and "PermissionDenied" in text, f"{tool} is refused ({text[:100]})")


async def listen(url, token, nexus_bin, endpoint, expected):
    """Told of list changes three ways: `subscriptions/listen` (2026-07-28) over HTTP and over
    stdio, and a handshake-era (`initialize`) stdio session's own notification. Prints
    "listening" once all three are open; the caller then changes the tenant's tools."""
    legacy_told = asyncio.Event()

    async def on_message(message):
        if isinstance(message, mcp.types.ToolListChangedNotification):
            legacy_told.set()

    params = mcp.StdioServerParameters(
        command=nexus_bin, args=["mcp"], env={"NEXUS_ENDPOINT": endpoint, "NEXUS_TOKEN": token})
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as h:
        async with mcp.Client(streamable_http_client(url, http_client=h)) as over_http, \
                mcp.Client(params) as over_stdio, \
                mcp.Client(params, mode="legacy", message_handler=on_message) as legacy:
            check(legacy.session.protocol_version < "2026-07-28",
                  f"a handshake-era session ({legacy.session.protocol_version})")
            async with over_http.listen(tools_list_changed=True) as http_sub, \
                    over_stdio.listen(tools_list_changed=True) as stdio_sub:
                check(http_sub.honored.tools_list_changed and stdio_sub.honored.tools_list_changed,
                      "subscriptions/listen honors tools_list_changed over HTTP and stdio")
                print("listening", flush=True)
                for name, sub, client in (("HTTP", http_sub, over_http), ("stdio", stdio_sub, over_stdio)):
                    event = await asyncio.wait_for(sub.__anext__(), 30)
                    check(type(event).__name__ == "ToolsListChanged", f"told over {name} ({event})")
                    names = {t.name for t in (await client.list_tools()).tools}
                    check(expected in names, f"and {expected} is listed over {name}")
            await asyncio.wait_for(legacy_told.wait(), 30)
            names = {t.name for t in (await legacy.list_tools()).tools}
            check(expected in names, f"a handshake-era session is told too, and lists {expected}")


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "http":
        asyncio.run(http(*sys.argv[2:5]))
    elif mode == "stdio":
        asyncio.run(stdio(*sys.argv[2:5]))
    elif mode == "call":
        asyncio.run(call(*sys.argv[2:6]))
    elif mode == "refused":
        asyncio.run(refused(*sys.argv[2:6]))
    elif mode == "listen":
        asyncio.run(listen(*sys.argv[2:7]))
    else:
        sys.exit(f"unknown mode {mode}")
    print("passed", flush=True)
