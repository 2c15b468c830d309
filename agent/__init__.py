"""gpufleet agent: the daemon on every GPU server that runs jobs and never forgets them."""

from gpufleet.grpcenv import quiet_core_logs

quiet_core_logs()  # before this daemon imports grpc: its C core's own lines are not JSON
