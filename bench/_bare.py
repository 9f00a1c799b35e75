"""`python -m bench._bare --port N`: the floor of the web stack for bench.submit.

A Starlette app under uvicorn with the gateway's uvicorn settings, whose POST /v1/workflow
reads the same multipart body with the gateway's own reader (services.gateway.multipart,
every part read into memory as the create form does), and answers 201 with a small JSON
body of the same shape as a create. No auth, no gRPC, no database.
"""

from __future__ import annotations

import argparse
import logging
import uuid

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.gateway.multipart import MultipartReader

LIMIT = 50 * 1024 * 1024


async def create(request: Request) -> Response:
    reader = MultipartReader(request.headers.get("content-type"), request.stream(), max_body_bytes=LIMIT)
    fields: dict[str, str] = {}
    async for part in reader.parts():
        fields[part.name] = (await part.read(limit=4 * 1024 * 1024)).decode("utf-8")
    workflow_id = str(uuid.uuid4())
    return JSONResponse(
        {"id": workflow_id, "name": fields.get("name", ""), "status": "accepted", "tags": [],
         "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
         "started_at": None, "completed_at": None},
        status_code=201, headers={"Location": f"/v1/workflow/{workflow_id}"})


async def healthz(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


app = Starlette(routes=[Route("/v1/workflow", create, methods=["POST"]), Route("/healthz", healthz)])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    # The gateway's logging and uvicorn settings (its access log included), so the floor is comparable.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = uvicorn.Config(app, host="127.0.0.1", port=args.port, lifespan="on", ws="none", log_config=None)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
