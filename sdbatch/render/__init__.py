"""Everything that imports torch and diffusers (and nothing that imports ray)."""
