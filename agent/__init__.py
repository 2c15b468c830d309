"""gpufleet agent: the daemon on every GPU server that runs jobs and never forgets them."""
