"""The reference service: phased startup, a chat WebSocket that needs `services`, health."""
