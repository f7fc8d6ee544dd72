"""Fetchers for real corpora (downloaded by the set-up itself, never shipped with the code)."""

from lcm.corpora.debian import DDTP_TO_FLORES, fetch_debian_descriptions

__all__ = ["DDTP_TO_FLORES", "fetch_debian_descriptions"]
