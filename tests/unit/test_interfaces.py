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


def test_brokerSeamsProvidedAndVerified():
    """The seams inside the broker: delivery targets of every protocol, the cluster as the
    core reaches it, MQTT sessions as the cluster reaches them (interfaces.py)."""
    from zope.interface.verify import verifyClass

    from robustmq.cluster.node import ClusterNode
    from robustmq.core.shared import SharedGroup
    from robustmq.interfaces import (
        IClusterRouting,
        ICongestible,
        IDeliveryTarget,
        ISessionDirectory,
    )
    from robustmq.protocols.amqp._server import AMQPServer
    from robustmq.protocols.amqp._topicspace import AMQPTarget, TopicSpace
    from robustmq.protocols.kafka._mappings import MappedTopicWriter
    from robustmq.protocols.kafka._node import KafkaNode
    from robustmq.testing.memory import InMemoryBroker

    harness = InMemoryBroker({"mappings": [{"mqtt": "a/#", "kafka": "a"}]})
    broker, clock = harness.broker, harness.clock
    verifyObject(ISessionDirectory, harness.node)
    session, _ = harness.sessions.open("c", True, None, 0)
    verifyObject(IDeliveryTarget, session)
    verifyObject(ICongestible, session)
    verifyObject(IDeliveryTarget, SharedGroup("g", "a/#"))
    verifyClass(IClusterRouting, ClusterNode)
    from robustmq.storage.memory import MemoryShardStore

    broker.store = MemoryShardStore(broker.settings.storage, clock=clock)
    kafka = KafkaNode(broker, clock)
    writer = kafka.mappings.writers["a"]
    assert isinstance(writer, MappedTopicWriter)
    verifyObject(IDeliveryTarget, writer)
    verifyObject(ICongestible, writer)
    space = TopicSpace(AMQPServer(broker, clock))
    verifyObject(IDeliveryTarget, AMQPTarget(space, object()))  # type: ignore[arg-type]
