"""Tests of the storage service: signing, the backend contract, the gRPC service, the process."""
