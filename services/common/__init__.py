"""Pieces every service shares: the error tree and gRPC server lifecycle."""
