"""Documents to concept shards: reading, validation, sentence splitting, encoding, shard writing."""
