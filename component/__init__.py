"""Roster delegation for XMPP: the web app owns every user's roster."""

__version__ = "0.1.0"
