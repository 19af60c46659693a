"""The voice agent: one endpoint that turns a caller's audio into a spoken conversation."""
