"""Flows that cross model services (one module per flow); routes call them, services never do."""
