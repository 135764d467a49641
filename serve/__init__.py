"""cgserve: a Fauxpilot- and OpenAI-compatible completion server."""
