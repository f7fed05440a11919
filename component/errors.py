"""The errors the service reports to its operator or callers."""


class ConfigError(Exception):
    """The configuration is missing, unreadable or invalid; the message says what to fix."""


class StoreError(Exception):
    """The XMPP server refused or failed to read or write a roster."""

    def __init__(self, message: str, condition: str = "undefined-condition") -> None:
        super().__init__(message)
        self.condition = condition
