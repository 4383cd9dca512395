"""Videos -> webdataset shards -> latents + text embeddings -> resumable training loaders."""
