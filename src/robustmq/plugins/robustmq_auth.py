"""Registers the built-in authentication plugins."""

from robustmq.core.auth import allowAllPlugin
from robustmq.core.scram import scramSha256Plugin, scramSha512Plugin
from robustmq.core.security.authenticators import anonymousPlugin, certPlugin
from robustmq.core.security.httpauth import httpPlugin
from robustmq.core.security.jwtauth import jwtPlugin
from robustmq.core.security.users import usersPlugin

__all__ = [
    "allowAllPlugin",
    "anonymousPlugin",
    "certPlugin",
    "httpPlugin",
    "jwtPlugin",
    "scramSha256Plugin",
    "scramSha512Plugin",
    "usersPlugin",
]
