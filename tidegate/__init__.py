"""tidegate: one governed, auditable channel for an organization's data to leave."""

__version__ = "0.1.0"
