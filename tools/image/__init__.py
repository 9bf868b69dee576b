"""Container images of teams-sbc, built from Debian packages and uv.lock without a registry or
a container runtime: ``./dev image`` (``python -m tools.image``) writes OCI archives to
``dist/images/``. docs/images.md says what they hold and how to push them."""
