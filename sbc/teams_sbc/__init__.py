"""teams-sbc: a Session Border Controller for Microsoft Teams Direct Routing."""

__version__ = "0.1.0"
