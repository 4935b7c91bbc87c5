"""Model adapters: the `Layout` of the visual tokens of a transformers VLM's inputs."""
