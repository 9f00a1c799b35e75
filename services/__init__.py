"""comfyfleet's services: gateway, scheduler, storage, runner, and what they share (common).

This package runs before any service imports grpc, so it is where gRPC core's transport is
chosen: gRPC reads GRPC_EXPERIMENTS once, when grpc is first imported.

Every service's gRPC connections run on gRPC core's own poller (iomgr) rather than on
EventEngine endpoints. grpc.aio's EventEngine endpoints hand every read and write to a thread
of EventEngine's pool and back, and a thread hop costs ~139 us of CPU on a small VM. Measured
on the 2-core machine `make bench` runs on (`python -m bench._floors`, five alternating rounds,
client / server CPU per call and wall): a unary call 291-371 / 465-592 us and 719-934 us wall
instead of 345-543 / 620-1005 us and 899-1600 us; a message on an open stream 84-119 / 95-132
us and 122-167 us wall instead of 153-163 / 128-178 us and 216-283 us.

An operator who sets GRPC_EXPERIMENTS (even to an empty string) keeps their own choice.
"""

import os

GRPC_EXPERIMENTS = "-event_engine_client,-event_engine_listener,-event_engine_for_all_other_endpoints"

# Whether GRPC_EXPERIMENTS came from outside (then it is left as it is) or from here.
GRPC_EXPERIMENTS_GIVEN = "GRPC_EXPERIMENTS" in os.environ
os.environ.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS)
