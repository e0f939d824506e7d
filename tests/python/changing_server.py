"""An MCP server (the official Python SDK) whose tool list changes: `add_tool` adds a tool
named by its argument and says so with `notifications/tools/list_changed`, on the session
(a client of the `initialize` handshake) and to `subscriptions/listen` streams; `header`
answers with a request header it was sent (over HTTP).

    changing_server.py            (stdio)
    changing_server.py http PORT  (streamable HTTP at http://127.0.0.1:PORT/mcp)
"""

import sys

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("changing")


@server.tool()
async def add_tool(name: str, ctx: Context) -> str:
    """Adds a tool NAME that answers with its own name."""

    def answer() -> str:
        return name

    server.add_tool(answer, name=name, description=f"added by add_tool: {name}")
    try:
        await ctx.session.send_tool_list_changed()
    except Exception:  # a 2026-07-28 connection has no session to tell
        pass
    await ctx.notify_tools_changed()
    return f"added {name}"


@server.tool()
async def header(name: str, ctx: Context) -> str:
    """The value of request header NAME (over HTTP), or "" without it."""
    return (ctx.headers or {}).get(name.lower(), "")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
