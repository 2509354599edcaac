"""The OpenAPI document, built from the same catalog and ranges the gateway enforces."""

from __future__ import annotations

from typing import Any

from shared import catalog
from shared.messages import OUTPUT_FORMATS, TASKS


def openapi_document() -> dict[str, Any]:
    models = sorted({m.name for entries in catalog.CATALOG.values() for m in entries})
    auto_or = {"oneOf": [{"type": "string", "enum": ["auto"]}, {"type": "number"}]}
    job_form = {
        "type": "object",
        "required": ["image", "task"],
        "properties": {
            "image": {"type": "string", "format": "binary", "description": "the photo"},
            "task": {"type": "string", "enum": list(TASKS)},
            "mask": {
                "type": "string",
                "format": "binary",
                "description": "inpaint only: same size as the image, white = fill",
            },
            "model": {
                "type": "string",
                "enum": models,
                "description": "default: the task's best available model",
            },
            "sigma": {
                **auto_or,
                "description": "noise level (0–255 scale) or auto",
                "x-range": list(catalog.SIGMA_RANGE),
            },
            "quality": {
                **auto_or,
                "description": "JPEG quality the image was saved at, or auto",
                "x-range": list(catalog.JPEG_QUALITY_RANGE),
            },
            "scale": {"type": "integer", "enum": list(catalog.SCALES)},
            "max_side": {
                "type": "integer",
                "minimum": catalog.MAX_SIDE_RANGE[0],
                "maximum": catalog.MAX_SIDE_RANGE[1],
                "description": "shrink so the long side is at most this many pixels first",
            },
            "format": {"type": "string", "enum": list(OUTPUT_FORMATS), "default": "png"},
            "strength": {
                "type": "number",
                "minimum": 0,
                "maximum": 1,
                "description": "superres: 0 = PSNR-oriented weights, 1 = GAN weights",
            },
            "iterations": {
                "type": "integer",
                "minimum": catalog.DIP_ITERATIONS_RANGE[0],
                "maximum": catalog.DIP_ITERATIONS_RANGE[1],
                "description": "model=dip only: optimisation steps (early stop may end sooner)",
            },
        },
    }
    error = {"type": "object", "properties": {"error": {"type": "string"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Restora", "version": "1"},
        "paths": {
            "/api/v1/jobs": {
                "post": {
                    "summary": "Submit an image to restore",
                    "requestBody": {"content": {"multipart/form-data": {"schema": job_form}}},
                    "responses": {
                        "202": {"description": "accepted: {id, state, status_url}"},
                        "400": {"description": "bad field", "content": _json(error)},
                        "413": {"description": "too large", "content": _json(error)},
                        "415": {"description": "not an image", "content": _json(error)},
                        "503": {"description": "broker or store unavailable"},
                    },
                }
            },
            "/api/v1/jobs/{id}": {
                "get": {"summary": "The job document, with fresh presigned links"},
                "delete": {"summary": "Cancel the job and delete its objects"},
            },
            "/api/v1/jobs/{id}/events": {"get": {"summary": "Server-sent events of the job"}},
            "/api/v1/models": {"get": {"summary": "Models and option ranges per task"}},
            "/healthz": {"get": {"summary": "Liveness"}},
            "/readyz": {"get": {"summary": "Broker and store reachable"}},
        },
        "x-models": {task: catalog.models_for(task) for task in TASKS},
    }


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}
