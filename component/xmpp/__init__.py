"""The XMPP side: a slixmpp external component (XEP-0114), in parts with one job each.

- ``link``: the stream to the server, kept up with capped backoff; sends IQs.
- ``grants``: the privileges (XEP-0356) and delegations (XEP-0355) the server advertises.
- ``presence``: who is online, from the presence the server copies to us.
- ``delegation``: users' roster requests delegated to us, answered or refused.
- ``pushes``: roster pushes to clients while rosters are delegated to us.

None of them knows the web app: the application hands the delegation part a callable that
produces a user's roster.
"""
