"""See services/runtime/__init__.py for what this layer may import."""
