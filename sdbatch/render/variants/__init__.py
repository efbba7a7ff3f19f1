"""Per-row variants on a warm pipeline: LoRAs, hotswap slots, ControlNets, VAEs, and the inputs they read."""
