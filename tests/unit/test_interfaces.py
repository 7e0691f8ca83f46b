"""Every built-in implementation provides the interface it is registered under."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.plugin import IPlugin
from zope.interface.verify import verifyObject

from robustmq.config import settingsFromMapping
from robustmq.core.auth import AllowAll
from robustmq.core.scram import ScramServer
from robustmq.interfaces import (
    IAuthenticator,
    IAuthenticatorPlugin,
    IAuthMechanism,
    IAuthMechanismPlugin,
    IProtocolPlugin,
    IShardStore,
    IShardStorePlugin,
)
from robustmq.registry import findPlugins


def test_protocolPluginsDiscoveredAndVerified():
    plugins = findPlugins(IProtocolPlugin)
    assert {"mqtt", "kafka", "amqp"} <= set(plugins)
    for plugin in plugins.values():
        verifyObject(IPlugin, plugin)
        verifyObject(IProtocolPlugin, plugin)


def test_storePluginsBuildVerifiedStores(tmp_path):
    settings = settingsFromMapping({"storage": {"data_dir": str(tmp_path)}})
    plugins = findPlugins(IShardStorePlugin)
    assert {"memory", "segment"} <= set(plugins)
    for plugin in plugins.values():
        verifyObject(IShardStorePlugin, plugin)
        verifyObject(IShardStore, plugin.build(settings, Clock()))


def test_authenticationPlugins():
    settings = settingsFromMapping({})
    for plugin in findPlugins(IAuthenticatorPlugin).values():
        verifyObject(IAuthenticatorPlugin, plugin)
        verifyObject(IAuthenticator, plugin.build(settings))
    verifyObject(IAuthenticator, AllowAll())
    mechanisms = findPlugins(IAuthMechanismPlugin)
    assert "SCRAM-SHA-256" in mechanisms
    for plugin in mechanisms.values():
        verifyObject(IAuthMechanismPlugin, plugin)
        verifyObject(IAuthMechanism, plugin.build(settings)())
    verifyObject(IAuthMechanism, ScramServer(lambda name: None))
