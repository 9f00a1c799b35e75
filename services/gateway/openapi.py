"""GET /openapi.json: the public API as OpenAPI 3.1, generated from the contracts.

JSON routes come from the scheduler services' `google.api.http` annotations: path, method,
path and query parameters, request body, and the response schema from the response message
(or its `response_body` field). The multipart and SSE routes, which the gateway serves
itself, come from `GATEWAY_ONLY` below: their form fields and the RPC they end in. Message
schemas follow the gateway's JSON: enums as lowercase words, timestamps as RFC 3339 strings,
unset strings and times as null, graphs (`workflow_json`, `body`) as JSON objects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from comfyfleet.scheduler.v1 import (
    event_service_pb2,
    runner_service_pb2,
    template_service_pb2,
    user_service_pb2,
    webhook_service_pb2,
    workflow_service_pb2,
)
from google.api import annotations_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, MethodDescriptor
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.gateway import runner_routes, webhook_routes

Json = dict[str, Any]
SERVICES = [
    workflow_service_pb2.DESCRIPTOR.services_by_name["WorkflowService"],
    runner_service_pb2.DESCRIPTOR.services_by_name["RunnerService"],
    template_service_pb2.DESCRIPTOR.services_by_name["TemplateService"],
    user_service_pb2.DESCRIPTOR.services_by_name["UserService"],
    webhook_service_pb2.DESCRIPTOR.services_by_name["WebhookService"],
    event_service_pb2.DESCRIPTOR.services_by_name["EventService"],
]
ERROR_STATUSES = {"400": "bad input", "401": "missing, invalid or expired token", "403": "a tier limit",
                  "404": "absent or not yours", "409": "a state conflict", "413": "over the size limit",
                  "429": "rate limited", "503": "a dependency is down"}
# Fields whose JSON is a graph object, not the string the proto carries.
GRAPH_FIELDS = {"workflow_json", "body"}
# Request bodies that are a partial update of a resource: the fields that may be sent.
UPDATE_FIELDS = {"UpdateRunner": runner_routes.UPDATABLE, "UpdateWebhook": webhook_routes.FIELDS}
_SCALARS = {
    FieldDescriptor.TYPE_STRING: "string", FieldDescriptor.TYPE_BOOL: "boolean",
    FieldDescriptor.TYPE_DOUBLE: "number", FieldDescriptor.TYPE_FLOAT: "number",
}


@dataclass(frozen=True)
class FormRoute:
    """A route the gateway serves itself (multipart or SSE), and the RPC it ends in."""

    method: str
    path: str
    rpc: str  # "Service.Method"
    summary: str
    form: dict[str, Json] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    status: str = "201"
    sse: bool = False


_TEXT: Json = {"type": "string"}
_FILE: Json = {"type": "string", "format": "binary"}
_PRIORITY: Json = {"type": "string", "enum": ["low", "normal", "high"]}
_PARAMS_NOTE = "plus `$<name>` (text or file) and `#<name>` (choice) fields for the graph's placeholders"
GATEWAY_ONLY = [
    FormRoute("post", "/v1/workflow", "WorkflowService.CreateWorkflow",
              f"Create and execute a workflow, {_PARAMS_NOTE}",
              {"name": _TEXT, "workflow_json": _FILE, "tags": _TEXT, "priority": _PRIORITY, "webhook_url": _TEXT},
              ("name", "workflow_json")),
    FormRoute("post", "/v1/workflow/{id}/rerun", "WorkflowService.RerunWorkflow",
              f"Rerun with only the fields to change, {_PARAMS_NOTE}", {"priority": _PRIORITY}),
    FormRoute("get", "/v1/workflow/{id}/subscribe", "WorkflowService.WatchWorkflow",
              "Server-Sent Events: a snapshot, then every event", status="200", sse=True),
    FormRoute("get", "/v1/events", "EventService.WatchEvents",
              "(+) Server-Sent Events: every event of the caller's workflows; id = the caller's event number, "
              "data = the workflow stream's JSON plus workflow_id; ?workflow_id= filters", status="200", sse=True),
    FormRoute("post", "/v1/template", "TemplateService.CreateTemplate", "Save a template",
              {"name": _TEXT, "description": _TEXT, "body": _FILE}, ("name", "description", "body")),
    FormRoute("put", "/v1/template/{id}", "TemplateService.UpdateTemplate", "Change a template's fields",
              {"name": _TEXT, "description": _TEXT, "body": _FILE}, status="200"),
    FormRoute("post", "/v1/template/{id}/run", "TemplateService.RunTemplate", f"Run a template, {_PARAMS_NOTE}",
              {"name": _TEXT, "tags": _TEXT, "priority": _PRIORITY, "webhook_url": _TEXT}),
]
OUTPUT_SCHEMA: Json = {"type": "object", "properties": {
    "id": _TEXT, "workflow_id": _TEXT, "src": _TEXT, "filename": _TEXT, "content_type": _TEXT,
    "size": {"type": "integer"}, "node_id": _TEXT}}


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()


def enum_words(enum: EnumDescriptor) -> list[str]:
    """WORKFLOW_STATUS_QUEUED -> "queued"; the UNSPECIFIED value is never shown."""
    prefix = _snake(enum.name) + "_"
    return [v.name.removeprefix(prefix).lower() for v in enum.values if v.number != 0]


class SchemaBuilder:
    """Message descriptors -> JSON schemas, response messages as shared components."""

    def __init__(self) -> None:
        self.components: dict[str, Json] = {}

    def field(self, f: FieldDescriptor, *, request: bool) -> Json:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            value = f.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self._single(value, request=request)}
        single = self._single(f, request=request)
        if f.is_repeated:
            return {"type": "array", "items": single}
        return single

    def _single(self, f: FieldDescriptor, *, request: bool) -> Json:
        nullable = not request
        if f.name in GRAPH_FIELDS and f.type == FieldDescriptor.TYPE_STRING:
            return {} if not request else {"type": "object"}
        if f.enum_type is not None:
            return {"type": "string", "enum": enum_words(f.enum_type)}
        if f.message_type is not None:
            if f.message_type.full_name == "google.protobuf.Timestamp":
                return {"type": ["string", "null"] if nullable else "string", "format": "date-time"}
            return self.message(f.message_type, request=request)
        if f.type in _SCALARS:
            kind = _SCALARS[f.type]
            return {"type": [kind, "null"] if nullable and kind == "string" else kind}
        integer: Json = {"type": ["integer", "null"] if nullable and f.has_presence else "integer"}
        return integer

    def message(self, m: Descriptor, *, request: bool = False, only: tuple[str, ...] | None = None) -> Json:
        fields = [f for f in m.fields if only is None or f.name in only]
        fields = [f for f in fields if f.message_type is None
                  or f.message_type.full_name != "google.protobuf.FieldMask"]
        schema: Json = {"type": "object",
                        "properties": {f.name: self.field(f, request=request) for f in fields}}
        if request:
            schema["additionalProperties"] = False
            return schema
        if m.name not in self.components:
            self.components[m.name] = {}  # a placeholder while recursing
            self.components[m.name] = schema
        return {"$ref": f"#/components/schemas/{m.name}"}


def _rule(method: MethodDescriptor) -> Any:
    """The method's google.api.HttpRule, or None without one."""
    rule = method.GetOptions().Extensions[annotations_pb2.http]
    return rule if rule.WhichOneof("pattern") else None


def _errors() -> Json:
    error = {"$ref": "#/components/schemas/Error"}
    return {code: {"description": why, "content": {"application/json": {"schema": error}}}
            for code, why in ERROR_STATUSES.items()}


def _path_params(path: str) -> list[Json]:
    return [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{(\w+)}", path)]


def _success(builder: SchemaBuilder, method: MethodDescriptor, response_body: str, status: str) -> Json:
    if status == "204":
        return {"204": {"description": "done, no body"}}
    output = method.output_type
    target = output.fields_by_name[response_body].message_type if response_body else output
    assert target is not None
    schema = builder.message(target)
    return {status: {"description": "success", "content": {"application/json": {"schema": schema}}}}


def _summary(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", " ", name).capitalize()


def _rpc(name: str) -> MethodDescriptor:
    service, method = name.split(".")
    return next(s for s in SERVICES if s.name == service).methods_by_name[method]


def _link_created_ids(paths: dict[str, Json]) -> None:
    """OpenAPI links from each create (201) to the operations on what it created (`{id}` paths
    under the same collection), so clients and test tools can follow them."""
    for path, ops in paths.items():
        created = ops.get("post", {}).get("responses", {}).get("201")
        if created is None or "{" in path:
            continue
        targets = [op for sub, sub_ops in paths.items() if sub.startswith(f"{path}/{{id}}")
                   for op in sub_ops.values()]
        created["links"] = {op["operationId"]: {"operationId": op["operationId"],
                                                "parameters": {"id": "$response.body#/id"}} for op in targets}


@cache
def document() -> Json:
    builder = SchemaBuilder()
    paths: dict[str, Json] = {}
    overridden = {(r.method, r.path) for r in GATEWAY_ONLY}
    for service in SERVICES:
        for method in service.methods:
            rule = _rule(method)
            if rule is None:
                continue
            verb = rule.WhichOneof("pattern")
            path = getattr(rule, verb)
            if (verb, path) in overridden:
                continue
            status = "204" if verb == "delete" else "201" if verb == "post" and method.name.startswith("Create") \
                else "200"
            in_path = set(re.findall(r"{(\w+)}", path))
            op: Json = {"operationId": method.name, "summary": _summary(method.name), "tags": [service.name],
                        "parameters": _path_params(path),
                        "responses": {**_success(builder, method, rule.response_body, status), **_errors()}}
            request = method.input_type
            if rule.body:
                body_type = request if rule.body == "*" else request.fields_by_name[rule.body].message_type
                assert body_type is not None
                only = UPDATE_FIELDS.get(method.name)
                schema = builder.message(body_type, request=True, only=only)
                for name in in_path:
                    schema["properties"].pop(name, None)
                op["requestBody"] = {"required": method.name != "CreateRunnerToken",
                                     "content": {"application/json": {"schema": schema}}}
            else:
                for f in request.fields:
                    if f.name not in in_path and f.type != FieldDescriptor.TYPE_MESSAGE and not f.is_repeated:
                        op["parameters"].append({"name": f.name, "in": "query", "required": False,
                                                 "schema": builder.field(f, request=True)})
            paths.setdefault(path, {})[verb] = op
    for route in GATEWAY_ONLY:
        method = _rpc(route.rpc)
        op = {"operationId": method.name, "summary": route.summary, "tags": [method.containing_service.name],
              "parameters": _path_params(route.path), "responses": _errors()}
        if route.sse:
            op["parameters"].append({"name": "Last-Event-ID", "in": "header", "required": False,
                                     "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"}})
            op["responses"]["200"] = {"description": "an event stream",
                                      "content": {"text/event-stream": {"schema": {"type": "string"}}}}
        else:
            response_field = next(f.name for f in method.output_type.fields)
            op["responses"].update(_success(builder, method, response_field, route.status))
            op["requestBody"] = {"required": bool(route.required), "content": {"multipart/form-data": {"schema": {
                "type": "object", "properties": route.form, "required": list(route.required)}}}}
        paths.setdefault(route.path, {})[route.method] = op
    paths.setdefault("/v1/workflow/{id}/outputs", {})["get"] = {
        "operationId": "ListOutputs", "summary": "Signed download URLs of a completed workflow's outputs",
        "tags": ["WorkflowService"], "parameters": _path_params("/v1/workflow/{id}/outputs"),
        "responses": {"200": {"description": "the outputs", "content": {"application/json": {
            "schema": {"type": "array", "items": OUTPUT_SCHEMA}}}}, **_errors()}}
    for path, summary in (("/healthz", "Liveness"), ("/readyz", "The gateway reaches scheduler and storage"),
                          ("/metrics", "Prometheus metrics"), ("/openapi.json", "This document")):
        paths[path] = {"get": {"operationId": path.strip("/").replace(".", "_"), "summary": summary,
                               "security": [], "responses": {"200": {"description": "ok"},
                                                             "503": {"description": "not ready"}}}}
    _link_created_ids(paths)
    builder.components["Error"] = {"type": "object", "required": ["status", "message", "reason"], "properties": {
        "status": {"type": "integer"}, "message": {"type": "string"}, "reason": {"type": "string"},
        "details": {"type": "array", "items": {"type": "object"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "comfyfleet", "version": "1",
                 "description": "One API in front of many ComfyUI machines (compatible with ComfyControl's)."},
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": dict(sorted(builder.components.items())),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    }


async def openapi_route(request: Request) -> Response:
    """GET /openapi.json."""
    return JSONResponse(document())
