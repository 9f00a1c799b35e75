"""The public HTTP API of comfyfleet: REST + streamed multipart uploads + SSE, in front of gRPC.

Stateless: every request becomes calls to the scheduler (workflows, users) and to storage
(object bytes). Run it with `python -m services.gateway`; settings come from GATEWAY_* env vars.
"""
