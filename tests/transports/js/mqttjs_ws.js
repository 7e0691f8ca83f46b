// MQTT.js over WebSocket against a RobustMQ ws listener, driven by test_websocket.py.
// Usage: node mqttjs_ws.js ws://127.0.0.1:PORT/mqtt TOPIC_PREFIX
// Subscribes to PREFIX/# at QoS 2, publishes at QoS 0, 1 and 2, and prints one
// JSON line per message received; exits 0 when all three arrived, 1 on error or
// after 10 seconds.
const mqtt = require("mqtt");

const [url, prefix] = process.argv.slice(2);
const timer = setTimeout(() => {
  console.error("timeout");
  process.exit(1);
}, 10000);

const client = mqtt.connect(url, {
  protocolVersion: 4,
  clientId: `mqttjs-${prefix}`,
  reconnectPeriod: 0,
  connectTimeout: 5000,
});
const got = [];
client.on("error", (err) => {
  console.error(`error: ${err.message}`);
  process.exit(1);
});
client.on("message", (topic, payload, packet) => {
  got.push({ topic, payload: payload.toString(), qos: packet.qos });
  console.log(JSON.stringify(got[got.length - 1]));
  if (got.length === 3) {
    clearTimeout(timer);
    client.end(false, () => process.exit(0));
  }
});
client.on("connect", () => {
  client.subscribe(`${prefix}/#`, { qos: 2 }, (err) => {
    if (err) {
      console.error(`subscribe: ${err.message}`);
      process.exit(1);
    }
    for (const qos of [0, 1, 2]) {
      client.publish(`${prefix}/q${qos}`, `hello ${qos}`, { qos });
    }
  });
});
