"""Developer tools (`python -m scoregen.tools.layers`)."""
