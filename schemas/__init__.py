"""marshmallow schemas: one per payload the bridge sends or receives."""
