"""rollforge orchestration: config loading, CLI and (later) tracking, Ray and cluster helpers."""
