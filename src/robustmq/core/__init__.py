"""The protocol-neutral broker: messages, topic trie, router, sessions, retained."""
