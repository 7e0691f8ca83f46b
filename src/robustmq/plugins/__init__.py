"""RobustMQ's plugin package, searched with C{twisted.plugin.getPlugins}.

Every module here exposes objects providing C{twisted.plugin.IPlugin} and
one of the RobustMQ plugin interfaces (L{robustmq.interfaces.IProtocolPlugin},
L{robustmq.interfaces.IShardStorePlugin}, L{robustmq.interfaces.IAuthenticatorPlugin}).
Third-party packages add modules to this package (a namespace-style plugin
directory, as with C{twisted.plugins}) and are found the same way as the
built-in ones.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))  # type: ignore[name-defined]
__all__: list[str] = []
