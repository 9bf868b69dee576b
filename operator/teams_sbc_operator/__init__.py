"""The teams-sbc operator: reconciles TeamsTrunk and TeamsTenant custom resources."""

__version__ = "0.1.0"
