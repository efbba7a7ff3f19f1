"""The manifest, torch-free: read (local or remote), validate with row-precise errors, normalize; author, from-images."""
