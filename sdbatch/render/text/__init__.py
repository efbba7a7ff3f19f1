"""Text conditioning: A1111 prompts to chunked, weighted text-encoder states; textual inversion embeddings."""
