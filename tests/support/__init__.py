"""Test helpers: servers, clusters, fault injection and offline model fixtures (LoRAs, ControlNets, single files)."""
