"""Networks in Wan2.1 key layouts: DiT, causal 3-D VAE, latent codecs and text encoders."""
