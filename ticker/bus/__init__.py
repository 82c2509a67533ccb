"""The Redis boundary between shards and web replicas: channels, snapshots, demand, leases."""
