"""STT engines: the model behind the streaming logic. Only the decode scheduler's thread calls them."""
