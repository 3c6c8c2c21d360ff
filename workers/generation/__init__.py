"""Generation models by name: a local causal LM (``gpu`` queue) or an OpenAI-compatible chat API (``api``)."""
