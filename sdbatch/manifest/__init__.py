"""The manifest, torch-free: read, validate with row-precise errors, normalize; author, from-images."""
