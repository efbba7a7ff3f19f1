"""The manifest, torch-free: read (local or remote), validate (row-precise errors), normalize; author, from-images."""
